// WCAG AA for the colours text is drawn in, computed from the stylesheet's own custom
// properties, in the light and the dark scheme: 4.5:1 against the page and the panels.
import { expect, test } from "vitest";
import css from "./styles.css?raw";

function variables(block: string): Record<string, string> {
  const found: Record<string, string> = {};
  for (const match of block.matchAll(/--([a-z-]+):\s*(#[0-9a-f]{6})\b/gi)) {
    if (match[1] && match[2]) found[match[1]] = match[2].toLowerCase();
  }
  return found;
}

function luminance(hex: string): number {
  const [r, g, b] = [1, 3, 5].map((i) => {
    const c = Number.parseInt(hex.slice(i, i + 2), 16) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  }) as [number, number, number];
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

function contrast(a: string, b: string): number {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x) as [number, number];
  return (hi + 0.05) / (lo + 0.05);
}

const light = variables(/:root\s*{([^}]*)}/.exec(css)?.[1] ?? "");
const darkBlock = /prefers-color-scheme:\s*dark\)\s*{\s*:root\s*{([^}]*)}/.exec(css)?.[1] ?? "";
const dark = { ...light, ...variables(darkBlock) };

// Text colours: body text, muted text and badges, links, status pills (running = ok;
// creating/pausing/resuming = warn; failed = danger; paused/offline = muted), errors.
const TEXT = ["text", "muted", "accent", "danger", "ok", "warn"];
const BACKGROUNDS = ["bg", "panel"];

test("the stylesheet defines both schemes", () => {
  expect(Object.keys(light)).toEqual(expect.arrayContaining([...TEXT, ...BACKGROUNDS]));
  expect(Object.keys(variables(darkBlock))).toEqual(
    expect.arrayContaining([...TEXT, ...BACKGROUNDS]),
  );
});

test.each([
  ["light", light],
  ["dark", dark],
])("%s: every text colour meets WCAG AA on the page and on panels", (_, scheme) => {
  const failures: string[] = [];
  for (const fg of TEXT) {
    for (const bg of BACKGROUNDS) {
      const ratio = contrast(scheme[fg] ?? "", scheme[bg] ?? "");
      if (!(ratio >= 4.5)) failures.push(`--${fg} on --${bg}: ${ratio.toFixed(2)}`);
    }
  }
  const button = contrast(scheme["accent-text"] ?? "", scheme.accent ?? "");
  if (!(button >= 4.5)) failures.push(`--accent-text on --accent: ${button.toFixed(2)}`);
  expect(failures).toEqual([]);
});

test("the contrast formula matches WCAG's reference values", () => {
  expect(contrast("#000000", "#ffffff")).toBeCloseTo(21, 5);
  expect(contrast("#777777", "#ffffff")).toBeCloseTo(4.48, 2);
});
