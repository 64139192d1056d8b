import { useEffect, useState } from "react";

/** Copy `text` to the clipboard on demand: "yes" for two seconds after it worked, "no" when
 *  there is no clipboard here (an insecure origin, a refusal; `failed` then offers another
 *  way), null otherwise. */
export function useCopy(
  text: string,
  failed?: () => void,
): ["yes" | "no" | null, () => Promise<void>] {
  const [copied, setCopied] = useState<"yes" | "no" | null>(null);
  useEffect(() => {
    if (copied === null) return;
    const timer = setTimeout(() => setCopied(null), 2000);
    return () => clearTimeout(timer);
  }, [copied]);

  async function copy() {
    try {
      await navigator.clipboard.writeText(text);
      setCopied("yes");
    } catch {
      failed?.();
      setCopied("no");
    }
  }
  return [copied, copy];
}
