import type { User } from "./api";

interface Props {
  user: User;
}

/** The signed-in user's own account: password and sessions (routed at /account). */
export function AccountPage({ user }: Props) {
  return (
    <section aria-labelledby="account-heading">
      <h1 id="account-heading">Account</h1>
      <p className="muted">Signed in as {user.username}.</p>
    </section>
  );
}
