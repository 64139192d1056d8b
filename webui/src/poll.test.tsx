import { render } from "@testing-library/react";
import { afterEach, expect, test, vi } from "vitest";
import { useVisiblePoll } from "./poll";

function Poller({ load }: { load: () => void }) {
  useVisiblePoll(load, 5000);
  return null;
}

let visibility: DocumentVisibilityState = "visible";

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
  visibility = "visible";
});

function setVisibility(state: DocumentVisibilityState) {
  visibility = state;
  document.dispatchEvent(new Event("visibilitychange"));
}

test("polls while visible, stops while hidden, catches up at once when shown", () => {
  vi.useFakeTimers();
  vi.spyOn(document, "visibilityState", "get").mockImplementation(() => visibility);
  const load = vi.fn();
  const { unmount } = render(<Poller load={load} />);
  vi.advanceTimersByTime(15_000);
  expect(load).toHaveBeenCalledTimes(3);

  setVisibility("hidden");
  vi.advanceTimersByTime(60_000);
  expect(load).toHaveBeenCalledTimes(3);

  setVisibility("visible");
  expect(load).toHaveBeenCalledTimes(4);
  vi.advanceTimersByTime(5000);
  expect(load).toHaveBeenCalledTimes(5);

  window.dispatchEvent(new Event("focus"));
  expect(load).toHaveBeenCalledTimes(6);

  unmount();
  vi.advanceTimersByTime(60_000);
  expect(load).toHaveBeenCalledTimes(6);
});
