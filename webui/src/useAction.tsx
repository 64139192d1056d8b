import { useCallback, useState } from "react";
import { describe } from "./api";

/** Runs a user action, shows its failure in words, then reloads the panel's data. */
export function useAction(reload: () => Promise<void>) {
  const [error, setError] = useState<string | null>(null);
  const act = useCallback(
    async (work: () => Promise<unknown>) => {
      setError(null);
      try {
        await work();
      } catch (e) {
        setError(describe(e));
      }
      await reload();
    },
    [reload],
  );
  return { error, setError, act };
}

export function Alert({ message }: { message: string | null }) {
  if (!message) return null;
  return (
    <p className="error" role="alert">
      {message}
    </p>
  );
}
