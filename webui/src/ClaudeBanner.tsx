import { atLeast, type ClaudeSetup, type Role } from "./api";
import "./claude.css";

const DOCS_TITLE = "Claude in sandboxes: the Anthropic proxy";

interface Props {
  claude: ClaudeSetup | undefined;
  role: Role;
}

/**
 * Says that Claude is not set up on this server. Owners and maintainers, who will be asked
 * about it, get what to set and where; everyone else a short note of whom to ask.
 */
export function ClaudeBanner({ claude, role }: Props) {
  if (!claude || claude.configured) return null;
  if (!atLeast(role, "maintainer")) {
    return (
      <p className="claude-note" role="note">
        Claude is not available yet — ask the workspace owner. Until then, prompts in opencode fail.
      </p>
    );
  }
  // The heading says the first half of the server's sentence; the rest is what to do.
  const rest = claude.message.replace(/^Claude is not set up on this server:\s*/, "");
  return (
    <section className="claude-banner" aria-labelledby="claude-banner-title">
      <h2 id="claude-banner-title">Claude is not set up on this server</h2>
      <p>{rest.charAt(0).toUpperCase() + rest.slice(1)}</p>
      <p>
        Until then, prompts in opencode fail with a message saying so. Whoever runs the server
        starts it with the key in its environment, for example:
      </p>
      <pre>ANTHROPIC_API_KEY=sk-ant-… twistd -n cli-server</pre>
      <p className="small">
        The key stays on the server: sandboxes get a token of their own for its Anthropic proxy.
        More in docs/anthropic.md, “{DOCS_TITLE}”.
      </p>
    </section>
  );
}
