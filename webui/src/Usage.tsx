import { type FormEvent, useEffect, useState } from "react";
import { api, describe, type UsageReport, type Workspace } from "./api";
import { Alert } from "./useAction";

const number = new Intl.NumberFormat("en");

interface Props {
  workspace: Workspace;
  refreshKey: number;
}

/** This month's Claude usage of the workspace, and (for owners) its monthly budget. */
export function Usage({ workspace, refreshKey }: Props) {
  const [report, setReport] = useState<UsageReport | null>(null);
  const [budget, setBudget] = useState("");
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    void refreshKey;
    api
      .usage(workspace.id)
      .then((r) => {
        if (r && typeof r === "object" && "month" in r) setReport(r);
      })
      .catch(() => undefined);
  }, [workspace.id, refreshKey]);

  async function save(event: FormEvent) {
    event.preventDefault();
    setError(null);
    try {
      setReport(await api.setBudget(workspace.id, budget.trim() === "" ? null : Number(budget)));
      setBudget("");
    } catch (e) {
      setError(describe(e));
    }
  }

  if (!report) return null;
  const used = report.month.total_tokens;
  const cap = report.monthly_token_budget;
  return (
    <div className="usage">
      <p className="muted" aria-live="polite">
        Claude this month: <strong>{number.format(used)}</strong> tokens
        {cap !== null ? ` of a ${number.format(cap)} budget` : ""} ({report.month.requests}{" "}
        requests)
      </p>
      {workspace.role === "owner" && (
        <form onSubmit={save} className="row">
          <label>
            <span className="sr-only">Monthly token budget</span>
            <input
              name="budget"
              inputMode="numeric"
              pattern="[0-9]*"
              placeholder={cap === null ? "No budget (set one)" : `Budget: ${cap}`}
              value={budget}
              onChange={(e) => setBudget(e.target.value)}
            />
          </label>
          <button type="submit">{budget.trim() === "" ? "Remove budget" : "Set budget"}</button>
        </form>
      )}
      <Alert message={error} />
    </div>
  );
}
