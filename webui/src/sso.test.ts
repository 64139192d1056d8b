// Every refusal the server can land a sign-in with (sso/claims.py REFUSALS) has its own
// sentence here; an unknown one gets the general sentence.
import { expect, test } from "vitest";
import claims from "../../src/cli_server/sso/claims.py?raw";
import { linkUrl, signInUrl, ssoErrorSentence } from "./sso";

const FALLBACK = ssoErrorSentence("no-such-code");

test("a sentence for each of the server's refusal codes", () => {
  const block = /REFUSALS = \{([\s\S]*?)\n\}/.exec(claims)?.[1] ?? "";
  const codes = [...block.matchAll(/^ {4}"([a-z_]+)":/gm)].map((m) => m[1] as string);
  expect(codes).toContain("account_exists");
  expect(codes.length).toBeGreaterThanOrEqual(10);
  for (const code of codes) expect(ssoErrorSentence(code), code).not.toBe(FALLBACK);
  expect(ssoErrorSentence("constructor")).toBe(FALLBACK); // (own keys only)
});

test("sign-in and link addresses return to this site", () => {
  const github = { name: "github", label: "GitHub", login_url: "/api/auth/oidc/github/login" };
  expect(signInUrl(github, "/account")).toBe("/api/auth/oidc/github/login?return_to=%2Faccount");
  expect(linkUrl(github)).toBe(
    "/api/auth/oidc/github/login?link=1&return_to=%2Faccount%3Flinked%3Dgithub",
  );
});
