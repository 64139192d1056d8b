import { useEffect, useState } from "react";
import { AuthScreen } from "./AuthScreen";
import { ApiError, api, onSessionEnded, type User } from "./api";
import { Dashboard } from "./Dashboard";

export function App() {
  const [user, setUser] = useState<User | null | undefined>(undefined);

  // A 401 anywhere means the session ended elsewhere (revoked, password changed, disabled).
  useEffect(() => onSessionEnded(() => setUser(null)), []);

  useEffect(() => {
    api
      .me()
      .then(setUser)
      .catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 401) setUser(null);
        else setUser(null);
      });
  }, []);

  if (user === undefined) {
    return (
      <main className="center" aria-busy="true">
        <p className="muted">Loading…</p>
      </main>
    );
  }
  if (user === null) return <AuthScreen onSignedIn={setUser} />;
  return (
    <Dashboard
      user={user}
      onSignedOut={() => {
        setUser(null);
      }}
    />
  );
}
