import { useEffect, useRef } from "react";

/** Calls ``load`` every ``intervalMs`` while the page is visible, and at once when it becomes
 * visible again or regains focus; nothing while hidden. Stateless on the server side (plain
 * GETs), so it works the same behind several replicas. */
export function useVisiblePoll(load: () => unknown, intervalMs: number, enabled = true): void {
  const latest = useRef(load);
  latest.current = load;
  useEffect(() => {
    if (!enabled) return;
    let timer: ReturnType<typeof setInterval> | null = null;
    const tick = () => void latest.current();
    const start = () => {
      if (timer === null) timer = setInterval(tick, intervalMs);
    };
    const stop = () => {
      if (timer !== null) clearInterval(timer);
      timer = null;
    };
    const onVisibility = () => {
      if (document.visibilityState === "visible") {
        tick();
        start();
      } else stop();
    };
    if (document.visibilityState !== "hidden") start();
    document.addEventListener("visibilitychange", onVisibility);
    window.addEventListener("focus", tick);
    return () => {
      stop();
      document.removeEventListener("visibilitychange", onVisibility);
      window.removeEventListener("focus", tick);
    };
  }, [intervalMs, enabled]);
}
