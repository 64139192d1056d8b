import { useEffect, useState } from "react";
import { atLeast, type ClaudeSetup, type Role } from "./api";
import "./claude.css";

const DOCS_TITLE = "Claude in sandboxes: the Anthropic proxy";
/** The command after the README's install (a virtualenv in the checkout). */
export const START_COMMAND = "ANTHROPIC_API_KEY=sk-ant-… .venv/bin/twistd -n cli-server";
/** Set once the how-to has been shown open: later visits show only the summary line. */
export const SEEN_KEY = "cli-server.claude-howto-seen";

interface Props {
  claude: ClaudeSetup | undefined;
  role: Role;
  /** The instance admin sees the banner at the top of the dashboard instead (ServerClaudeBanner). */
  isAdmin?: boolean;
}

/**
 * Says that Claude is not set up on this server. Only the person who runs the server can
 * set the key: the administrator gets how; owners and maintainers, who will be asked, whom to
 * ask and what that person does; developers and guests a short note of whom to ask.
 */
export function ClaudeBanner({ claude, role, isAdmin = false }: Props) {
  if (!claude || claude.configured || isAdmin) return null;
  if (!atLeast(role, "maintainer")) {
    return (
      <p className="claude-note" role="note">
        Claude is not available yet — ask the administrator of this server (the person who runs it).
        Until then, prompts in opencode fail.
      </p>
    );
  }
  return (
    <Banner
      summary="prompts in opencode fail until the person who runs this server gives it an Anthropic API key — ask the administrator of this server."
      howToLabel="What the administrator does"
    />
  );
}

/** The administrator's banner on every dashboard page, workspace or not: asks the public
 * `/readyz`, which says whether the proxy has credentials. */
export function ServerClaudeBanner() {
  const [configured, setConfigured] = useState<boolean | null>(null);
  useEffect(() => {
    fetch("/readyz", { credentials: "same-origin" })
      .then((r) => r.json())
      .then((said: { claude?: string }) => {
        if (said && typeof said.claude === "string")
          setConfigured(said.claude !== "not configured");
      })
      .catch(() => undefined);
  }, []);
  if (configured !== false) return null;
  return (
    <Banner
      summary="prompts in opencode fail until you, who run this server, give it an Anthropic API key."
      howToLabel="How to set it"
    />
  );
}

/** Phones and later visits start with the how-to folded. */
function startOpen(): boolean {
  const small =
    typeof window.matchMedia === "function" && window.matchMedia("(max-width: 640px)").matches;
  let seen = false;
  try {
    seen = window.localStorage.getItem(SEEN_KEY) !== null;
  } catch {
    // (storage refused: treat every visit as the first)
  }
  return !small && !seen;
}

function Banner({ summary, howToLabel }: { summary: string; howToLabel: string }) {
  const [open] = useState(startOpen);
  useEffect(() => {
    if (!open) return;
    try {
      window.localStorage.setItem(SEEN_KEY, "1");
    } catch {
      // (nothing to remember it in)
    }
  }, [open]);
  return (
    <section className="claude-banner" aria-labelledby="claude-banner-title">
      <p className="claude-summary">
        <strong id="claude-banner-title">Claude is not set up on this server</strong>: {summary}
      </p>
      <details open={open}>
        <summary>{howToLabel}</summary>
        <p>
          Stop the server and start it again with the key in its environment, from the directory
          cli-server was installed in:
        </p>
        <pre className="command">{START_COMMAND}</pre>
        <p className="small">
          ANTHROPIC_AUTH_TOKEN works instead of a key. The key stays on the server: sandboxes get a
          token of their own for its Anthropic proxy. More in docs/anthropic.md, “{DOCS_TITLE}”.
        </p>
      </details>
    </section>
  );
}
