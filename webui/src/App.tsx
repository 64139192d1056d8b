import { useEffect, useRef, useState } from "react";
import { AuthScreen } from "./AuthScreen";
import { ApiError, api, onSessionEnded, type User } from "./api";
import { Dashboard } from "./Dashboard";
import { useRoute } from "./route";

export const SESSION_ENDED =
  "You were signed out: your session ended on another device or your password changed.";

export function App() {
  const [user, setUser] = useState<User | null | undefined>(undefined);
  // The address survives signing in: a shared link opens its screen once the user is in.
  const [route, navigate] = useRoute();

  // Why the sign-in screen shows, when a session this tab was using ended.
  const [ended, setEnded] = useState(false);

  // A 401 anywhere means the session ended elsewhere (revoked, password changed, disabled).
  const signedIn = useRef(false);
  signedIn.current = !!user;
  useEffect(
    () =>
      onSessionEnded(() => {
        if (signedIn.current) setEnded(true);
        setUser(null);
      }),
    [],
  );

  useEffect(() => {
    api
      .me()
      .then((me) => {
        // A refused link lands signed in with ?sso_error=: the account page says why.
        if (me && new URLSearchParams(window.location.search).has("sso_error")) {
          window.history.replaceState(null, "", `/account${window.location.search}`);
          navigate({ page: "account" }, { replace: true });
        }
        setUser(me);
      })
      .catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 401) setUser(null);
        else setUser(null);
      });
  }, [navigate]);

  if (user === undefined) {
    return (
      <main className="center" aria-busy="true">
        <p className="muted">Loading…</p>
      </main>
    );
  }
  if (user === null)
    return (
      <AuthScreen
        onSignedIn={(signedIn) => {
          setEnded(false);
          setUser(signedIn);
        }}
        notice={ended ? SESSION_ENDED : null}
      />
    );
  return (
    <Dashboard
      user={user}
      route={route}
      navigate={navigate}
      onSignedOut={() => {
        setUser(null);
      }}
    />
  );
}
