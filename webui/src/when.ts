/** Relative times and durations in words, for sandbox cards. */

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** "just now", "5 min ago", "3 h ago", "2 days ago" (a future time counts as now). */
export function ago(iso: string, now: number): string {
  const ms = Math.max(0, now - Date.parse(iso));
  if (ms < MINUTE) return "just now";
  return `${span(ms)} ago`;
}

/** "under a minute", "5 min", "2 h 5 min", "3 days 4 h". */
export function span(ms: number): string {
  if (ms < MINUTE) return "under a minute";
  if (ms < HOUR) return `${Math.floor(ms / MINUTE)} min`;
  if (ms < DAY) {
    const minutes = Math.floor((ms % HOUR) / MINUTE);
    return `${Math.floor(ms / HOUR)} h${minutes ? ` ${minutes} min` : ""}`;
  }
  const days = Math.floor(ms / DAY);
  const hours = Math.floor((ms % DAY) / HOUR);
  return `${days} day${days === 1 ? "" : "s"}${hours ? ` ${hours} h` : ""}`;
}

/** The absolute time, for a title: the reader's own locale and zone. */
export function absolute(iso: string): string {
  return new Date(iso).toLocaleString();
}
