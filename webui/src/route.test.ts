import { expect, test } from "vitest";
import { formatRoute, isPlainClick, parseRoute, type Route, titleFor } from "./route";

const W = "0b7c4c1e-3f0a-4a55-9c1f-2f3b8a1d9e21";

test.each<[string, Route]>([
  ["/", { page: "home" }],
  ["", { page: "home" }],
  [`/w/${W}`, { page: "workspace", workspaceId: W, tab: "sandboxes" }],
  [`/w/${W}/`, { page: "workspace", workspaceId: W, tab: "sandboxes" }],
  [`/w/${W}/members`, { page: "workspace", workspaceId: W, tab: "members" }],
  [`/w/${W}/audit`, { page: "workspace", workspaceId: W, tab: "audit" }],
  ["/account", { page: "account" }],
  ["/admin/users", { page: "users" }],
  [`/w/${W}/nope`, { page: "unknown", path: `/w/${W}/nope` }],
  ["/w", { page: "unknown", path: "/w" }],
  ["/admin", { page: "unknown", path: "/admin" }],
  ["/account/extra", { page: "unknown", path: "/account/extra" }],
  ["/w/%E0%A4%A", { page: "workspace", workspaceId: "%E0%A4%A", tab: "sandboxes" }],
])("parseRoute(%j)", (path, route) => {
  expect(parseRoute(path)).toEqual(route);
});

test.each<Route>([
  { page: "home" },
  { page: "workspace", workspaceId: W, tab: "sandboxes" },
  { page: "workspace", workspaceId: W, tab: "members" },
  { page: "workspace", workspaceId: W, tab: "audit" },
  { page: "account" },
  { page: "users" },
])("formatRoute and parseRoute round-trip %j", (route) => {
  expect(parseRoute(formatRoute(route))).toEqual(route);
});

test("formatted addresses are the documented ones", () => {
  expect(formatRoute({ page: "workspace", workspaceId: W, tab: "sandboxes" })).toBe(`/w/${W}`);
  expect(formatRoute({ page: "workspace", workspaceId: W, tab: "members" })).toBe(
    `/w/${W}/members`,
  );
  expect(formatRoute({ page: "users" })).toBe("/admin/users");
  // An id is one path segment, whatever it holds.
  expect(formatRoute({ page: "workspace", workspaceId: "a/b", tab: "sandboxes" })).toBe("/w/a%2Fb");
});

test("titles name the workspace and the tab, then the product", () => {
  const members: Route = { page: "workspace", workspaceId: W, tab: "members" };
  const sandboxes: Route = { page: "workspace", workspaceId: W, tab: "sandboxes" };
  expect(titleFor(members, "Platform team")).toBe("Platform team · Members — cli-server");
  expect(titleFor(sandboxes, "Platform team")).toBe("Platform team · Sandboxes — cli-server");
  expect(titleFor(sandboxes, null)).toBe("Workspace not found — cli-server");
  expect(titleFor({ page: "workspace", workspaceId: W, tab: "audit" }, "Platform team")).toBe(
    "Platform team · Audit — cli-server",
  );
  expect(titleFor({ page: "account" }, null)).toBe("Account — cli-server");
  expect(titleFor({ page: "users" }, null)).toBe("Users — cli-server");
  expect(titleFor({ page: "home" }, null)).toBe("cli-server");
});

test("only a plain left click stays in the page", () => {
  const plain = { button: 0, metaKey: false, ctrlKey: false, shiftKey: false, altKey: false };
  expect(isPlainClick(plain)).toBe(true);
  expect(isPlainClick({ ...plain, ctrlKey: true })).toBe(false);
  expect(isPlainClick({ ...plain, metaKey: true })).toBe(false);
  expect(isPlainClick({ ...plain, shiftKey: true })).toBe(false);
  expect(isPlainClick({ ...plain, button: 1 })).toBe(false);
});

test("a sandbox's open page round-trips and is titled", () => {
  const id = "5e19d6c8-5340-490f-8b60-d32be3ee5eec";
  const open: Route = { page: "open", sandboxId: id };
  expect(parseRoute(`/open/${id}`)).toEqual(open);
  expect(parseRoute(`/open/${id}/`)).toEqual(open);
  expect(formatRoute(open)).toBe(`/open/${id}`);
  expect(parseRoute("/open")).toEqual({ page: "unknown", path: "/open" });
  expect(parseRoute(`/open/${id}/more`)).toEqual({ page: "unknown", path: `/open/${id}/more` });
  expect(titleFor(open, null)).toBe("Opening a sandbox — cli-server");
});
