import type { Member, Role } from "./api";
import { ROLES } from "./api";

/** What each role may do, as DESIGN.md's Roles section enforces it; shown where a role is
 * chosen. */
export const ROLE_HELP: Record<Role, string> = {
  owner: "Everything, including roles, the budget and deleting the workspace.",
  maintainer: "Adds members (never as owner) and manages sandboxes.",
  developer: "Creates, starts, pauses and deletes sandboxes; connects local agents.",
  guest: "Read-only: may list and open sandboxes, but not prompt opencode or change anything.",
};

export function ownerCount(members: readonly Member[]): number {
  return members.filter((m) => m.role === "owner").length;
}

/** The last owner can neither leave, be removed nor be demoted: the workspace would be left
 * without anyone able to manage it (the server refuses it too). */
export function isLastOwner(member: Member, members: readonly Member[]): boolean {
  return member.role === "owner" && ownerCount(members) <= 1;
}

/** The roles an owner may pick for ``member`` now. */
export function roleChoices(member: Member, members: readonly Member[]): Role[] {
  return isLastOwner(member, members) ? ["owner"] : [...ROLES];
}

/** Whether ``member`` may be offered Leave (themselves) or Remove (by an owner). */
export function canDepart(member: Member, members: readonly Member[]): boolean {
  return !isLastOwner(member, members);
}

const RANK: Record<Role, number> = { guest: 1, developer: 2, maintainer: 3, owner: 4 };

/** The confirmation's sentence for a role change: who, from what to what, and what it means
 * when you demote yourself. */
export function roleChangeQuestion(
  member: Member,
  role: Role,
  isMe: boolean,
  workspaceName: string,
): string {
  const who = isMe ? "your own role" : `${member.username}'s role`;
  const base = `Change ${who} in "${workspaceName}" from ${member.role} to ${role}?`;
  if (isMe && RANK[role] < RANK[member.role])
    return `${base} You cannot undo this yourself: another owner would have to give it back.`;
  return base;
}
