// Single sign-on in the web UI: the provider buttons' addresses, and the sentences for the
// codes a sign-in lands back with (`?sso_error=<code>`, the server's sso.claims.REFUSALS).

import type { Provider } from "./api";

const SENTENCES: Record<string, string> = {
  denied: "The sign-in was cancelled at the provider.",
  bad_state:
    "The sign-in took too long or was started in another browser tab or window. Please try again.",
  provider_error: "The sign-in provider refused the sign-in. Please try again.",
  provider_down: "The sign-in provider could not be reached. Please try again later.",
  email_unverified:
    "The provider has no verified email address for you. Verify one there, then try again.",
  domain_not_allowed: "Your email domain may not sign in to this server.",
  account_exists:
    "An account with your email address already exists. Sign in with its password, then link this provider on your account page.",
  identity_taken: "This identity is already linked to another account.",
  account_disabled: "This account is disabled. Ask your administrator.",
  registration_closed: "This server does not create new accounts. Ask your administrator.",
  sign_in_again:
    "For your safety, sign in again (sign out, then in) before linking a provider to your account.",
  busy: "Too many sign-ins are under way right now. Wait a minute and try again.",
};
const FALLBACK = "The sign-in did not work. Please try again, or ask your administrator.";

/** What to tell someone who came back from a provider with ``code``. */
export function ssoErrorSentence(code: string): string {
  return (Object.hasOwn(SENTENCES, code) && SENTENCES[code]) || FALLBACK;
}

/** Reads and removes ``names`` from the address bar's query (the rest stays): a reload or a
 * shared address does not say it again. */
export function takeFromQuery(...names: string[]): Record<string, string | null> {
  const url = new URL(window.location.href);
  const taken: Record<string, string | null> = {};
  let found = false;
  for (const name of names) {
    taken[name] = url.searchParams.get(name);
    if (url.searchParams.has(name)) found = true;
    url.searchParams.delete(name);
  }
  if (found)
    window.history.replaceState(window.history.state, "", url.pathname + url.search + url.hash);
  return taken;
}

/** "Sign in with GitHub": back to ``returnTo`` (a path on this site) afterwards. */
export function signInUrl(provider: Provider, returnTo: string): string {
  return `${provider.login_url}?return_to=${encodeURIComponent(returnTo)}`;
}

/** "Link GitHub" from the account page: back there, told which provider was linked. */
export function linkUrl(provider: Provider): string {
  const back = `/account?linked=${encodeURIComponent(provider.name)}`;
  return `${provider.login_url}?link=1&return_to=${encodeURIComponent(back)}`;
}
