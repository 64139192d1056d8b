-- Single sign-ons between the redirect to the provider and its callback, shared by every
-- replica (the callback may reach another one than the login). Keyed by a SHA-256 of the
-- browser's cookie, never the cookie itself; state, PKCE verifier and nonce are short-lived
-- secrets the server must present again, so they are kept as they are (and never logged).
CREATE TABLE pending_sign_ins (
    cookie_hash text PRIMARY KEY,
    provider text NOT NULL,
    state text NOT NULL,
    verifier text NOT NULL,
    nonce text NOT NULL,
    return_to text NOT NULL,
    link_to text,
    address text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX pending_sign_ins_expires ON pending_sign_ins (expires_at);
CREATE INDEX pending_sign_ins_address ON pending_sign_ins (address);
