import { type KeyboardEvent, useCallback, useEffect, useId, useRef, useState } from "react";
import { type AgentCode, api, describe } from "./api";
import { Alert } from "./useAction";

const OPENCODE_URL = "http://127.0.0.1:4096";
/** Words made only of these need no quoting in a POSIX shell. */
const PLAIN_NAME = /^[A-Za-z0-9._-]+$/;
/** The same, widened to what URLs and codes are made of (still nothing a shell expands). */
const PLAIN_ARG = /^[A-Za-z0-9._~:/@%+=,-]+$/;

/** Single-quotes a word for a POSIX shell unless it is plain already. */
function shellQuote(word: string, plain: RegExp): string {
  return plain.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

function agentCommand(grant: AgentCode, name: string): string {
  return [
    "twistd -n cli-agent",
    `--server ${shellQuote(grant.server_url, PLAIN_ARG)}`,
    `--code ${shellQuote(grant.code, PLAIN_ARG)}`,
    `--name ${shellQuote(name, PLAIN_NAME)}`,
    `--opencode-url ${OPENCODE_URL}`,
  ].join(" ");
}

/** "m:ss" for the milliseconds still to go, rounded up to the second. */
function countdown(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

interface Props {
  workspaceId: string;
  /** Called after the dialog closes (the panel reloads: the laptop may have joined). */
  onClosed?: () => void;
}

/** The "Connect a local agent" button and the dialog it opens. */
export function LocalAgentButton({ workspaceId, onClosed }: Props) {
  const [open, setOpen] = useState(false);
  const opener = useRef<HTMLButtonElement>(null);
  return (
    <>
      <button type="button" ref={opener} onClick={() => setOpen(true)}>
        Connect a local agent
      </button>
      {open && (
        <LocalAgentDialog
          workspaceId={workspaceId}
          onClose={() => {
            setOpen(false);
            opener.current?.focus();
            onClosed?.();
          }}
        />
      )}
    </>
  );
}

function LocalAgentDialog({ workspaceId, onClose }: { workspaceId: string; onClose: () => void }) {
  const dialog = useRef<HTMLDialogElement>(null);
  const nameInput = useRef<HTMLInputElement>(null);
  const command = useRef<HTMLPreElement>(null);
  const titleId = useId();
  const [grant, setGrant] = useState<AgentCode | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("my-laptop");
  const [now, setNow] = useState(() => Date.now());
  const [copied, setCopied] = useState<string | null>(null);

  const request = useCallback(async () => {
    setBusy(true);
    setError(null);
    setCopied(null);
    try {
      setGrant(await api.agentCode(workspaceId));
      setNow(Date.now());
    } catch (e) {
      setError(describe(e));
    } finally {
      setBusy(false);
    }
  }, [workspaceId]);

  // One code per opening (the guard keeps StrictMode's second effect run from minting another).
  const asked = useRef(false);
  useEffect(() => {
    if (asked.current) return;
    asked.current = true;
    void request();
  }, [request]);

  // Modal where the browser supports it (it then keeps focus inside); plain "open" otherwise.
  useEffect(() => {
    const node = dialog.current;
    if (!node) return;
    if (typeof node.showModal === "function") {
      if (!node.open) node.showModal();
    } else {
      node.setAttribute("open", "");
    }
    nameInput.current?.focus();
    return () => {
      if (typeof node.close === "function" && node.open) node.close();
    };
  }, []);

  const left = grant ? Date.parse(grant.expires_at) - now : Number.NaN;
  const expired = grant !== null && left <= 0;
  useEffect(() => {
    if (!grant || expired) return;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [grant, expired]);

  function onKeyDown(event: KeyboardEvent) {
    if (event.key !== "Escape") return;
    // Handled here so that it works without native dialog support too; preventing the default
    // keeps the browser from also sending its own "cancel".
    event.preventDefault();
    event.stopPropagation();
    onClose();
  }

  function selectCommand() {
    const node = command.current;
    const selection = window.getSelection();
    if (!node || !selection) return;
    const range = document.createRange();
    range.selectNodeContents(node);
    selection.removeAllRanges();
    selection.addRange(range);
  }

  async function copy(text: string) {
    // Absent outside secure contexts (plain http on anything but localhost).
    const clipboard: Clipboard | undefined = navigator.clipboard;
    try {
      if (!clipboard) throw new Error("no clipboard");
      await clipboard.writeText(text);
      setCopied("Copied to the clipboard.");
    } catch {
      selectCommand();
      setCopied(
        "This browser would not copy it: the command is selected, copy it with Ctrl+C (⌘C on a Mac).",
      );
    }
  }

  const text = grant ? agentCommand(grant, name) : "";
  return (
    <dialog
      ref={dialog}
      className="card agent-dialog"
      aria-labelledby={titleId}
      onCancel={(event) => {
        event.preventDefault();
        onClose();
      }}
      onKeyDown={onKeyDown}
    >
      <h2 id={titleId}>Connect a local agent</h2>
      <p className="muted small">
        Start <code>opencode serve --port 4096</code> on the laptop first. The code works once, for
        10 minutes; afterwards <code>twistd -n cli-agent --opencode-url {OPENCODE_URL}</code>{" "}
        reconnects with the saved credentials.
      </p>
      <label>
        Laptop name
        <input
          ref={nameInput}
          name="agent-name"
          maxLength={100}
          value={name}
          onChange={(e) => {
            setName(e.target.value);
            setCopied(null);
          }}
        />
      </label>
      {busy && <p className="muted">Requesting a code…</p>}
      <Alert message={error} />
      {grant && !expired && (
        <>
          <p className="small">
            Run this on the laptop. The code expires in{" "}
            <time
              dateTime={grant.expires_at}
              title={new Date(grant.expires_at).toLocaleString()}
              className="countdown"
            >
              {Number.isFinite(left) ? countdown(left) : "10 minutes"}
            </time>
            .
          </p>
          <div className="command">
            <pre ref={command}>{text}</pre>
            <button type="button" onClick={() => void copy(text)}>
              Copy
            </button>
          </div>
          <p className="muted small" aria-live="polite">
            {copied}
          </p>
        </>
      )}
      {expired && <p className="warning">This code has expired.</p>}
      <div className="row end">
        {(expired || (!grant && error)) && (
          <button type="button" className="primary" disabled={busy} onClick={() => void request()}>
            Get a new code
          </button>
        )}
        <button type="button" onClick={onClose}>
          Close
        </button>
      </div>
    </dialog>
  );
}
