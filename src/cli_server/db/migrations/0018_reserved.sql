-- PLACEHOLDER on the p-transit branch only: 0018 belongs to another branch (SSO sign-ins).
-- Delete this file when merging; that branch's 0018 takes its number.
SELECT 1;
