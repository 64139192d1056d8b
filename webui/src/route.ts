// The dashboard's addresses, over the History API: each workspace and tab has its own URL,
// Back and Forward work, and a copied link opens the same screen after sign-in.
import { useCallback, useEffect, useState } from "react";

export type Tab = "sandboxes" | "members" | "audit";
export type Route =
  | { page: "home" }
  | { page: "workspace"; workspaceId: string; tab: Tab }
  | { page: "account" }
  | { page: "users" }
  | { page: "open"; sandboxId: string }
  | { page: "unknown"; path: string };

export function parseRoute(pathname: string): Route {
  const parts = pathname.split("/").filter((p) => p !== "");
  const [first, second, third] = parts.map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts.length === 0) return { page: "home" };
  if (first === "w" && second && parts.length === 2)
    return { page: "workspace", workspaceId: second, tab: "sandboxes" };
  if (first === "w" && second && parts.length === 3 && (third === "members" || third === "audit"))
    return { page: "workspace", workspaceId: second, tab: third };
  if (first === "account" && parts.length === 1) return { page: "account" };
  if (first === "admin" && second === "users" && parts.length === 2) return { page: "users" };
  // A sandbox's shared address sends a browser without a session there to here (proxy/site.py).
  if (first === "open" && second && parts.length === 2) return { page: "open", sandboxId: second };
  return { page: "unknown", path: pathname };
}

export function formatRoute(route: Route): string {
  switch (route.page) {
    case "home":
      return "/";
    case "workspace": {
      const base = `/w/${encodeURIComponent(route.workspaceId)}`;
      return route.tab === "sandboxes" ? base : `${base}/${route.tab}`;
    }
    case "account":
      return "/account";
    case "users":
      return "/admin/users";
    case "open":
      return `/open/${encodeURIComponent(route.sandboxId)}`;
    case "unknown":
      return route.path;
  }
}

export const APP_NAME = "cli-server";
const TAB_TITLES: Record<Tab, string> = {
  sandboxes: "Sandboxes",
  members: "Members",
  audit: "Audit",
};

/** The page title: most specific first, the product last, e.g. "Platform team · Members —
 * cli-server". ``workspaceName`` is null while unknown or not accessible. */
export function titleFor(route: Route, workspaceName: string | null): string {
  const suffix = ` — ${APP_NAME}`;
  switch (route.page) {
    case "home":
      return APP_NAME;
    case "workspace":
      if (workspaceName === null) return `Workspace not found${suffix}`;
      return `${workspaceName} · ${TAB_TITLES[route.tab]}${suffix}`;
    case "account":
      return `Account${suffix}`;
    case "users":
      return `Users${suffix}`;
    case "open":
      return `Opening a sandbox${suffix}`;
    case "unknown":
      return `Page not found${suffix}`;
  }
}

export type Navigate = (route: Route, options?: { replace?: boolean }) => void;

/** The current route and a way to change it; follows Back and Forward (popstate). */
export function useRoute(): [Route, Navigate] {
  const [route, setRoute] = useState<Route>(() => parseRoute(window.location.pathname));
  useEffect(() => {
    const follow = () => setRoute(parseRoute(window.location.pathname));
    window.addEventListener("popstate", follow);
    return () => window.removeEventListener("popstate", follow);
  }, []);
  const navigate = useCallback<Navigate>((next, options) => {
    const url = formatRoute(next);
    if (url !== window.location.pathname) {
      if (options?.replace) window.history.replaceState(null, "", url);
      else window.history.pushState(null, "", url);
    }
    setRoute(parseRoute(url));
  }, []);
  return [route, navigate];
}

/** Whether a click on a link should stay in the page (a plain left click) rather than let
 * the browser open a new tab or window. */
export function isPlainClick(event: {
  button: number;
  metaKey: boolean;
  ctrlKey: boolean;
  shiftKey: boolean;
  altKey: boolean;
}): boolean {
  return event.button === 0 && !event.metaKey && !event.ctrlKey && !event.shiftKey && !event.altKey;
}
