// A real OpenID provider for the tests: npm oidc-provider (OpenID Certified) on 127.0.0.1.
//
//   node provider.mjs '{"port": 9400, "clients": [{"client_id", "client_secret",
//                       "redirect_uris": [...]}], "accounts": {"alice": {claims...}}}'
//
// Its dev interactions are the login and consent pages: POST /interaction/<uid> with
// prompt=login&login=<account>&password=<anything>, then prompt=consent; GET
// /interaction/<uid>/abort denies. Test-only admin routes under /_test/ (loopback only):
//   GET  /_test/ready               200 once listening
//   PUT  /_test/accounts/<id>       the account's claims (JSON)
//   POST /_test/rotate              a new signing key; the old one leaves the key set
//   POST /_test/tamper              the next token response's ID token is re-signed with
//                                   {"claims": {...}} merged in, or with a key outside the
//                                   key set ({"unknown_key": true}) -- a provider gone wrong
import { generateKeyPairSync, randomUUID } from "node:crypto";
import http from "node:http";
import * as jose from "jose";
import Provider from "oidc-provider";

const settings = JSON.parse(process.argv[2] || "{}");
const port = settings.port || 9400;
const issuer = `http://127.0.0.1:${port}`;
const accounts = new Map(Object.entries(settings.accounts || {}));
let tamper = null;

function newKey() {
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  return { ...privateKey.export({ format: "jwk" }), kid: randomUUID(), alg: "RS256", use: "sig" };
}

function makeProvider(key) {
  const provider = new Provider(issuer, {
    clients: (settings.clients || []).map((c) => ({
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: "client_secret_post",
      ...c,
    })),
    jwks: { keys: [key] },
    claims: {
      openid: ["sub"],
      email: ["email", "email_verified"],
      profile: ["name", "preferred_username"],
      groups: ["groups"],
    },
    conformIdTokenClaims: false, // scope claims in the ID token, as most providers do
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    findAccount: async (_ctx, id) => {
      const claims = accounts.get(id) ?? { email: `${id}@example.com`, email_verified: true };
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === "/token" && tamper && ctx.body && ctx.body.id_token) {
      const wanted = tamper;
      tamper = null;
      const payload = { ...jose.decodeJwt(ctx.body.id_token), ...(wanted.claims || {}) };
      const signer = wanted.unknown_key ? newKey() : current;
      const header = { alg: "RS256", kid: signer.kid, typ: "JWT" };
      const key = await jose.importJWK(signer, "RS256");
      ctx.body = { ...ctx.body, id_token: await new jose.SignJWT(payload).setProtectedHeader(header).sign(key) };
    }
  });
  return provider;
}

let current = newKey();
let provider = makeProvider(current);

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

async function admin(req, res) {
  const send = (code, value) => {
    res.writeHead(code, { "content-type": "application/json" });
    res.end(JSON.stringify(value));
  };
  const path = req.url.split("?")[0];
  if (path === "/_test/ready") return send(200, { issuer });
  if (req.method === "POST" && path === "/_test/rotate") {
    current = newKey();
    provider = makeProvider(current); // (sessions and codes live in the shared memory store)
    return send(200, { kid: current.kid });
  }
  if (req.method === "POST" && path === "/_test/tamper") {
    tamper = JSON.parse((await readBody(req)) || "{}");
    return send(200, {});
  }
  const account = path.match(/^\/_test\/accounts\/([^/]+)$/);
  if (req.method === "PUT" && account) {
    accounts.set(decodeURIComponent(account[1]), JSON.parse(await readBody(req)));
    return send(200, {});
  }
  return send(404, { error: "no such test route" });
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith("/_test/")) {
    admin(req, res).catch((e) => {
      res.writeHead(500);
      res.end(String(e));
    });
    return;
  }
  provider.callback()(req, res);
});
server.listen(port, "127.0.0.1", () => console.log(`oidc-provider ready at ${issuer}`));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
