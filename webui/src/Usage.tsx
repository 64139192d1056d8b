import { type FormEvent, useEffect, useId, useState } from "react";
import { api, describe, type UsageReport, type Workspace } from "./api";
import { ClaudeBanner } from "./ClaudeBanner";
import { Alert } from "./useAction";
import "./claude.css";

const exact = new Intl.NumberFormat("en");
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
/** A budget below this cannot hold one Claude call (each holds its max_tokens first). */
export const MIN_BUDGET = 1000;
const MAX_BUDGET = 10 ** 15;

/** Reads "2,000,000", "2 000 000" or "2000000"; a message in words when it is no budget. */
export function parseBudget(text: string): { value: number } | { problem: string } {
  const digits = text.replace(/[\s,_'\u00a0\u202f]/g, "");
  if (!/^\d+$/.test(digits)) {
    return { problem: "Enter a whole number of tokens, e.g. 2,000,000." };
  }
  const value = Number(digits);
  if (value < MIN_BUDGET) {
    return {
      problem: `A budget must be at least ${exact.format(MIN_BUDGET)} tokens: one Claude call needs more.`,
    };
  }
  if (value > MAX_BUDGET) return { problem: "That is more tokens than a budget can hold." };
  return { value };
}

interface Props {
  workspace: Workspace;
  refreshKey: number;
  /** The instance admin has the Claude banner at the top of the dashboard already. */
  isAdmin?: boolean;
}

/** This month's Claude usage of the workspace, its monthly budget, and whether Claude is set up. */
export function Usage({ workspace, refreshKey, isAdmin = false }: Props) {
  const [report, setReport] = useState<UsageReport | null>(null);
  // What the owner is typing; null while they are not editing (the field shows the budget).
  const [draft, setDraft] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const fieldId = useId();
  const hintId = useId();

  useEffect(() => {
    void refreshKey;
    api
      .usage(workspace.id)
      .then((r) => {
        if (r && typeof r === "object" && "month" in r) setReport(r);
      })
      .catch(() => undefined);
  }, [workspace.id, refreshKey]);

  async function store(value: number | null) {
    setError(null);
    setSaved(null);
    setBusy(true);
    try {
      setReport(await api.setBudget(workspace.id, value));
      setDraft(null);
      setSaved(
        value === null
          ? "Budget removed: Claude calls are no longer limited."
          : `Budget saved: ${exact.format(value)} tokens a month.`,
      );
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  }

  if (!report) return null;
  const used = report.month.total_tokens;
  const cap = report.monthly_token_budget;
  const owner = workspace.role === "owner";
  const shown = draft ?? (cap === null ? "" : exact.format(cap));
  const parsed = draft === null || draft.trim() === "" ? null : parseBudget(draft);
  const problem = parsed && "problem" in parsed ? parsed.problem : null;
  const changed = parsed !== null && "value" in parsed && parsed.value !== cap;
  const share = cap ? Math.min(1, used / cap) : 0;
  const summary =
    cap === null
      ? `${exact.format(used)} tokens`
      : `${compact.format(used)} of ${compact.format(cap)} tokens`;

  function submit(event: FormEvent) {
    event.preventDefault();
    if (parsed && "value" in parsed && changed) void store(parsed.value);
  }

  return (
    <div className="usage">
      <ClaudeBanner claude={report.claude} role={workspace.role} isAdmin={isAdmin} />
      <p className="usage-line" aria-live="polite">
        Claude this month: <strong>{summary}</strong> ({exact.format(report.month.requests)}{" "}
        {report.month.requests === 1 ? "request" : "requests"})
        {cap === null && owner ? " · no monthly budget" : ""}
      </p>
      {cap !== null && (
        <div
          className={share >= 1 ? "meter over" : "meter"}
          role="progressbar"
          aria-label="Monthly budget used"
          aria-valuemin={0}
          aria-valuemax={cap}
          aria-valuenow={Math.min(used, cap)}
          aria-valuetext={`${exact.format(used)} of ${exact.format(cap)} tokens (${Math.round(share * 100)}%)`}
        >
          <span style={{ width: `${share * 100}%` }} />
        </div>
      )}
      {cap !== null && used >= cap && (
        <p className="error small">
          The budget is used up: Claude calls are refused until next month
          {owner ? " or until you raise it" : " or until an owner raises it"}.
        </p>
      )}
      {owner ? (
        <form onSubmit={submit} className="budget-form" noValidate>
          <label htmlFor={fieldId}>
            Monthly token budget
            <input
              id={fieldId}
              name="budget"
              inputMode="numeric"
              autoComplete="off"
              placeholder="No budget: e.g. 2,000,000"
              value={shown}
              aria-invalid={problem ? true : undefined}
              aria-describedby={hintId}
              onChange={(e) => {
                setDraft(e.target.value);
                setSaved(null);
                setError(null);
              }}
            />
          </label>
          {changed && (
            <button type="submit" className="primary" disabled={busy}>
              {cap === null ? "Set budget" : "Save budget"}
            </button>
          )}
          {draft !== null && draft !== (cap === null ? "" : exact.format(cap)) && (
            <button type="button" disabled={busy} onClick={() => setDraft(null)}>
              Cancel
            </button>
          )}
          {cap !== null && (
            <button
              type="button"
              className="danger"
              disabled={busy}
              onClick={() => void store(null)}
            >
              Remove budget
            </button>
          )}
        </form>
      ) : (
        <p className="muted small">
          {cap === null
            ? "No monthly budget. Owners can set one."
            : `Monthly budget: ${exact.format(cap)} tokens, set by the workspace's owners.`}
        </p>
      )}
      {owner && (
        <p
          id={hintId}
          className={problem ? "error field-hint" : "muted field-hint"}
          aria-live="polite"
        >
          {problem ??
            saved ??
            (cap === null
              ? "Without a budget, Claude calls in this workspace are not limited."
              : "Once this month's usage reaches it, Claude calls are refused until next month.")}
        </p>
      )}
      <Alert message={error} />
    </div>
  );
}
