// A small typed client for the cli-server API. The session lives in an HttpOnly cookie that
// this code never sees; requests are same-origin, so the browser's Origin header satisfies
// the server's rule for state-changing calls.

export type Role = "owner" | "maintainer" | "developer" | "guest";
export const ROLES: Role[] = ["owner", "maintainer", "developer", "guest"];
const RANK: Record<Role, number> = { guest: 1, developer: 2, maintainer: 3, owner: 4 };
export const atLeast = (role: Role, wanted: Role): boolean => RANK[role] >= RANK[wanted];

export interface User {
  id: string;
  username: string;
  email: string | null;
  /** The instance admin (the first registered user) has the users page. */
  is_admin?: boolean;
  /** False for an account made by single sign-on that has not set a password. */
  has_password?: boolean;
}
export interface Workspace {
  id: string;
  name: string;
  role: Role;
  created_at: string;
}
export interface Member {
  user_id: string;
  username: string;
  role: Role;
}
/** An invitation to the signed-in user; they join only by accepting it. */
export interface Invitation {
  id: string;
  workspace_id: string;
  workspace_name: string;
  role: Role;
  invited_by: string | null;
  created_at: string;
  expires_at: string;
}
/** A workspace's pending invitation, as its owners and maintainers see it. */
export interface PendingInvitation {
  id: string;
  username: string;
  role: Role;
  invited_by: string | null;
  created_at: string;
  expires_at: string;
}
export type AddResult =
  | ({ status: "invited"; invitation_id: string } & PendingInvitation)
  | ({ status: "member" } & Member);
export type Status =
  | "creating"
  | "running"
  | "pausing"
  | "paused"
  | "resuming"
  | "offline"
  | "failed";
export interface Sandbox {
  id: string;
  workspace_id: string;
  name: string;
  status: Status;
  error: string | null;
  is_local: boolean;
  created_at: string;
  url: string | null;
  usage?: { tokens_this_month: number };
  // What the card tells (issue 17): optional so older fixtures still type-check.
  short_id?: string;
  created_by?: string | null;
  started_at?: string | null;
  last_activity_at?: string | null;
  paused_at?: string | null;
  paused_by?: PausedBy | null;
  /** A local sandbox's connected agent (null while none is); warning: it is older than us. */
  agent?: AgentInfo | null;
}
/** What a local sandbox's agent runs, and a sentence when it is older than the server. */
export interface AgentInfo {
  version: string | null;
  protocol: number;
  warning: string | null;
}
/** Who paused a paused sandbox: idleness (after how many minutes) or a person. */
export type PausedBy =
  | { kind: "idle"; idle_minutes: number | null }
  | { kind: "user"; username: string | null };
/** The end of a sandbox's opencode output. */
export interface SandboxLogs {
  lines: string[];
  truncated: boolean;
}
/** The ports a sandbox listens on, for its previews (GET /api/sandboxes/{id}/ports). */
export interface Ports {
  ports: number[];
  /** False: the backend cannot see its listening sockets, so a port is typed in instead. */
  listed: boolean;
  /** A local sandbox: only these ports, the ones its laptop allowed, are shared. */
  shared_only?: boolean;
}
/** A one-time code that lets a laptop's cli-agent join a workspace as a local sandbox. */
export interface AgentCode {
  code: string;
  expires_at: string;
  server_url: string;
}
/** Whether the server's Anthropic proxy has credentials, and what to do if not. */
export interface ClaudeSetup {
  configured: boolean;
  message: string;
  /** The documentation section that explains it: `docs/anthropic.md#<anchor>`. */
  help?: string;
}
export interface UsageReport {
  month: { requests: number; total_tokens: number };
  monthly_token_budget: number | null;
  claude?: ClaudeSetup;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** The request body's field at fault, when the server names one (400s). */
    readonly field?: string,
  ) {
    super(message);
  }
}

/** Told when the server answers 401: the session ended (signed out elsewhere, revoked, the
 * account disabled). The app goes back to the sign-in screen. */
let sessionEnded: (() => void) | null = null;
export function onSessionEnded(listener: (() => void) | null): () => void {
  sessionEnded = listener;
  return () => {
    if (sessionEnded === listener) sessionEnded = null;
  };
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers = { "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return undefined as T;
  const data: unknown = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data as { error?: { code?: string; message?: string; field?: string } } | null)
      ?.error;
    if (response.status === 401) sessionEnded?.();
    throw new ApiError(
      response.status,
      error?.code ?? "http_error",
      error?.message ?? `request failed (HTTP ${response.status})`,
      error?.field,
    );
  }
  return data as T;
}

export const api = {
  me: () => call<User>("GET", "/api/auth/me"),
  login: (username: string, password: string) =>
    call<User>("POST", "/api/auth/login", { username, password }),
  register: (username: string, password: string) =>
    call<User>("POST", "/api/auth/register", { username, password }),
  logout: () => call<void>("POST", "/api/auth/logout"),
  providers: () => call<Provider[]>("GET", "/api/auth/providers"),
  workspaces: () => call<Workspace[]>("GET", "/api/workspaces"),
  createWorkspace: (name: string) => call<Workspace>("POST", "/api/workspaces", { name }),
  deleteWorkspace: (id: string) => call<void>("DELETE", `/api/workspaces/${id}`),
  members: (id: string) => call<Member[]>("GET", `/api/workspaces/${id}/members`),
  addMember: (id: string, username: string, role: Role) =>
    call<AddResult>("POST", `/api/workspaces/${id}/members`, { username, role }),
  pendingInvitations: (id: string) =>
    call<PendingInvitation[]>("GET", `/api/workspaces/${id}/invitations`),
  revokeInvitation: (id: string) => call<void>("DELETE", `/api/invitations/${id}`),
  invitations: () => call<Invitation[]>("GET", "/api/invitations"),
  acceptInvitation: (id: string) => call<Workspace>("POST", `/api/invitations/${id}/accept`),
  declineInvitation: (id: string) => call<void>("POST", `/api/invitations/${id}/decline`),
  setRole: (id: string, userId: string, role: Role) =>
    call<Member>("PUT", `/api/workspaces/${id}/members/${userId}`, { role }),
  removeMember: (id: string, userId: string) =>
    call<void>("DELETE", `/api/workspaces/${id}/members/${userId}`),
  sandboxes: (id: string) => call<Sandbox[]>("GET", `/api/workspaces/${id}/sandboxes`),
  createSandbox: (id: string, name: string) =>
    call<Sandbox>("POST", `/api/workspaces/${id}/sandboxes`, { name }),
  pause: (id: string) => call<Sandbox>("POST", `/api/sandboxes/${id}/pause`),
  resume: (id: string) => call<Sandbox>("POST", `/api/sandboxes/${id}/resume`),
  deleteSandbox: (id: string) => call<void>("DELETE", `/api/sandboxes/${id}`),
  agentCode: (id: string) => call<AgentCode>("POST", `/api/workspaces/${id}/agent-code`),
  /** A one-time link to the sandbox's opencode, or (``port`` given) to that port's preview. */
  open: (id: string, port?: number) =>
    call<{ url: string }>(
      "POST",
      `/api/sandboxes/${id}/open`,
      port === undefined ? undefined : { port },
    ),
  ports: (id: string) => call<Ports>("GET", `/api/sandboxes/${id}/ports`),
  sandboxLogs: (id: string) => call<SandboxLogs>("GET", `/api/sandboxes/${id}/logs`),
  usage: (id: string) => call<UsageReport>("GET", `/api/workspaces/${id}/usage`),
  setBudget: (id: string, monthlyTokens: number | null) =>
    call<UsageReport>("PUT", `/api/workspaces/${id}/budget`, { monthly_tokens: monthlyTokens }),
};

/** One row of a workspace's audit log (GET /api/workspaces/{id}/audit). */
export interface AuditEntry {
  id: number;
  at: string;
  actor_id: string | null;
  actor_name: string | null;
  action: string;
  workspace_id: string | null;
  target_type: string | null;
  target_id: string | null;
  target_name: string | null;
  address: string | null;
  details: Record<string, unknown>;
}

export interface AuditPage {
  entries: AuditEntry[];
  next: number | null;
}

export interface AuditFilter {
  action?: string;
  actor?: string;
  before?: number | undefined;
  limit?: number;
}

export const auditApi = {
  /** A page of the workspace's audit log, newest first (owners and maintainers). */
  page: (workspaceId: string, filter: AuditFilter = {}) => {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(filter)) {
      if (value !== undefined && value !== "") query.set(name, String(value));
    }
    const text = query.toString();
    return call<AuditPage>("GET", `/api/workspaces/${workspaceId}/audit${text ? `?${text}` : ""}`);
  },
};

export function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 403 && error.code === "forbidden")
      return `Your role does not allow this: ${error.message}.`;
    return error.message.charAt(0).toUpperCase() + error.message.slice(1);
  }
  return "The server could not be reached. Check your connection and try again.";
}

/** One workspace with what deleting it takes along (GET /api/workspaces/{id}). */
export interface WorkspaceDetail extends Workspace {
  sandbox_counts: { total: number; running: number };
}
export const workspaceDetail = (id: string) =>
  call<WorkspaceDetail>("GET", `/api/workspaces/${id}`);

// Accounts and the instance (issue 17, item 6).

/** Who may create an account here, and the rules shown before anyone submits. */
export interface Registration {
  mode: "open" | "invite" | "closed";
  /** No accounts yet: the next one registered (the admin) is let in whatever the mode. */
  first: boolean;
  username_rule: string;
  password_rule: string;
  /** False: this server signs people in through its providers only. */
  password_login?: boolean;
  /** This server's version (a local agent's laptop needs the same). */
  version?: string;
}
/** One of the signed-in user's login sessions (never its token). */
export interface Session {
  id: string;
  created_at: string;
  last_seen_at: string;
  user_agent: string | null;
  address: string | null;
  current: boolean;
}
/** An account as the instance admin sees it. */
export interface AdminUser {
  id: string;
  username: string;
  email: string | null;
  created_at: string;
  is_admin: boolean;
  disabled: boolean;
  last_seen_at: string | null;
}
export interface SignupLink {
  id: string;
  created_at: string;
  expires_at: string;
  used_at: string | null;
  used_by: string | null;
}

export const accountsApi = {
  registration: () => call<Registration>("GET", "/api/auth/registration"),
  register: (username: string, password: string, invite: string | null) =>
    call<User>("POST", "/api/auth/register", {
      username,
      password,
      ...(invite ? { invite } : {}),
    }),
  changePassword: (currentPassword: string, newPassword: string) =>
    call<void>("PUT", "/api/auth/password", {
      current_password: currentPassword,
      new_password: newPassword,
    }),
  sessions: () => call<Session[]>("GET", "/api/auth/sessions"),
  revokeSession: (id: string) => call<void>("DELETE", `/api/auth/sessions/${id}`),
  users: () => call<AdminUser[]>("GET", "/api/admin/users"),
  disableUser: (id: string) => call<void>("POST", `/api/admin/users/${id}/disable`),
  enableUser: (id: string) => call<void>("POST", `/api/admin/users/${id}/enable`),
  resetPassword: (id: string) =>
    call<{ password: string }>("POST", `/api/admin/users/${id}/password`),
  signupLinks: () => call<SignupLink[]>("GET", "/api/admin/signup-links"),
  createSignupLink: () =>
    call<{ url: string; expires_at: string }>("POST", "/api/admin/signup-links"),
  revokeSignupLink: (id: string) => call<void>("DELETE", `/api/admin/signup-links/${id}`),
};

/** Sign-up links look like /#invite=TOKEN (a fragment: never sent to the server, so never in
 * its logs): the token, if this page was opened from one. */
export function inviteFromLocation(hash: string = window.location.hash): string | null {
  return new URLSearchParams(hash.replace(/^#/, "")).get("invite");
}

/** "3 minutes ago", "2 days ago": how long since an RFC 3339 moment. */
export function ago(moment: string, now: number = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(moment)) / 1000));
  if (seconds < 60) return "just now";
  const steps: [number, string][] = [
    [86400, "day"],
    [3600, "hour"],
    [60, "minute"],
  ];
  for (const [size, unit] of steps) {
    if (seconds >= size) {
      const n = Math.floor(seconds / size);
      return `${n} ${unit}${n === 1 ? "" : "s"} ago`;
    }
  }
  return "just now";
}

// Single sign-on (issue 20).

/** A configured sign-in provider: "Sign in with {label}" goes to ``login_url``. */
export interface Provider {
  name: string;
  label: string;
  login_url: string;
}
/** One of the signed-in user's linked sign-ins at a provider. */
export interface Identity {
  id: string;
  provider: string;
  label: string;
  email: string | null;
  created_at: string;
  last_used_at: string;
}

export const ssoApi = {
  identities: () => call<Identity[]>("GET", "/api/auth/identities"),
  unlink: (id: string) => call<void>("DELETE", `/api/auth/identities/${id}`),
  /** The first password of an account made by single sign-on (it has no current one). */
  setFirstPassword: (newPassword: string) =>
    call<void>("PUT", "/api/auth/password", { new_password: newPassword }),
};

// Personal API tokens (issue 24).

export type TokenScope = "read" | "write" | "admin";
/** One of the signed-in user's API tokens (never its secret). */
export interface ApiToken {
  id: string;
  name: string;
  scope: TokenScope;
  /** Restricted to this workspace; null: every workspace of the user. */
  workspace_id: string | null;
  created_at: string;
  expires_at: string;
  last_used_at: string | null;
}
export interface NewToken {
  name: string;
  scope: TokenScope;
  workspace_id: string | null;
  expires_at: string;
}

export const tokensApi = {
  list: () => call<ApiToken[]>("GET", "/api/auth/tokens"),
  /** The answer carries the secret (``token``): the only time the server shows it. */
  create: (token: NewToken) =>
    call<ApiToken & { token: string }>("POST", "/api/auth/tokens", token),
  revoke: (id: string) => call<void>("DELETE", `/api/auth/tokens/${id}`),
};

/** One sandbox, for a member of its workspace (404 otherwise): GET /api/sandboxes/{id}. */
export const sandboxDetail = (id: string) => call<Sandbox>("GET", `/api/sandboxes/${id}`);
