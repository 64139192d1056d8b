import { expect, test } from "vitest";
import type { Member } from "./api";
import { canDepart, isLastOwner, ownerCount, roleChangeQuestion, roleChoices } from "./roles";

const alice: Member = { user_id: "a", username: "alice", role: "owner" };
const bob: Member = { user_id: "b", username: "bob", role: "developer" };
const carol: Member = { user_id: "c", username: "carol", role: "owner" };

test("the only owner is never offered Leave, Remove or another role", () => {
  const members = [alice, bob];
  expect(ownerCount(members)).toBe(1);
  expect(isLastOwner(alice, members)).toBe(true);
  expect(canDepart(alice, members)).toBe(false);
  expect(roleChoices(alice, members)).toEqual(["owner"]);
  // Everyone else keeps every choice.
  expect(isLastOwner(bob, members)).toBe(false);
  expect(canDepart(bob, members)).toBe(true);
  expect(roleChoices(bob, members)).toEqual(["owner", "maintainer", "developer", "guest"]);
});

test("with two owners either may step down or leave", () => {
  const members = [alice, bob, carol];
  expect(ownerCount(members)).toBe(2);
  for (const owner of [alice, carol]) {
    expect(isLastOwner(owner, members)).toBe(false);
    expect(canDepart(owner, members)).toBe(true);
    expect(roleChoices(owner, members)).toContain("guest");
  }
});

test("the role-change question names who and what changes", () => {
  expect(roleChangeQuestion(bob, "guest", false, "Platform team")).toBe(
    `Change bob's role in "Platform team" from developer to guest?`,
  );
  const self = roleChangeQuestion(carol, "developer", true, "Platform team");
  expect(self).toContain("Change your own role");
  expect(self).toContain("from owner to developer");
  expect(self).toContain("another owner would have to give it back");
  expect(roleChangeQuestion(bob, "maintainer", true, "P")).not.toContain("give it back");
});
