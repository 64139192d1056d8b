import type { User } from "./api";

interface Props {
  user: User;
}

/** The instance admin's list of users (routed at /admin/users; only for `user.is_admin`). */
export function UsersPage({ user }: Props) {
  return (
    <section aria-labelledby="users-heading">
      <h1 id="users-heading">Users</h1>
      <p className="muted">{user.is_admin ? "" : "Only the instance admin sees this page."}</p>
    </section>
  );
}
