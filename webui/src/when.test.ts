import { expect, test } from "vitest";
import { ago, span } from "./when";

const now = Date.parse("2026-12-06T12:00:00Z");

test("relative times", () => {
  expect(ago("2026-12-06T11:59:30Z", now)).toBe("just now");
  expect(ago("2026-12-06T12:00:30Z", now)).toBe("just now");
  expect(ago("2026-12-06T11:55:00Z", now)).toBe("5 min ago");
  expect(ago("2026-12-06T09:00:00Z", now)).toBe("3 h ago");
  expect(ago("2026-12-04T11:00:00Z", now)).toBe("2 days 1 h ago");
});

test("durations", () => {
  expect(span(20_000)).toBe("under a minute");
  expect(span(2 * 3600_000 + 5 * 60_000)).toBe("2 h 5 min");
  expect(span(3600_000)).toBe("1 h");
  expect(span(86400_000)).toBe("1 day");
});
