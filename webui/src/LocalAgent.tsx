import { type KeyboardEvent, useCallback, useEffect, useId, useRef, useState } from "react";
import { type AgentCode, accountsApi, api, describe } from "./api";
import { Alert } from "./useAction";
import "./claude.css";

const OPENCODE_URL = "http://127.0.0.1:4096";
/** Words made only of these need no quoting in a POSIX shell. */
const PLAIN_NAME = /^[A-Za-z0-9._-]+$/;
/** The same, widened to what URLs and codes are made of (still nothing a shell expands). */
const PLAIN_ARG = /^[A-Za-z0-9._~:/@%+=,-]+$/;

/** Single-quotes a word for a POSIX shell unless it is plain already. */
function shellQuote(word: string, plain: RegExp): string {
  return plain.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/** Where the install step puts the agent: its own virtualenv, so nothing else changes. */
const AGENT_HOME = "~/.cli-agent";
/** cli-server has no separate agent package yet: this installs it from a clone. */
const INSTALL = `python3 -m venv ${AGENT_HOME} && ${AGENT_HOME}/bin/pip install ./cli-server`;
const OPENCODE = "opencode serve --port 4096";

export function agentCommand(grant: AgentCode, name: string): string {
  return [
    `${AGENT_HOME}/bin/twistd -n cli-agent`,
    `--server ${shellQuote(grant.server_url, PLAIN_ARG)}`,
    `--code ${shellQuote(grant.code, PLAIN_ARG)}`,
    `--name ${shellQuote(name, PLAIN_NAME)}`,
    `--opencode-url ${OPENCODE_URL}`,
  ].join(" ");
}

/** "14:05": the local time a code expires, for people who look away and come back. */
function clock(iso: string): string {
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "m:ss" for the milliseconds still to go, rounded up to the second. */
function countdown(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

/** A phone or tablet: a coarse pointer or a narrow screen. */
export function touchOrSmall(): boolean {
  if (typeof window.matchMedia !== "function") return false;
  return (
    window.matchMedia("(pointer: coarse)").matches ||
    window.matchMedia("(max-width: 640px)").matches
  );
}

/** This server's version, for the laptop's matching copy of cli-server. */
function useServerVersion(): string | null {
  const [version, setVersion] = useState<string | null>(null);
  useEffect(() => {
    accountsApi
      .registration()
      .then((said) => setVersion(typeof said?.version === "string" ? said.version : null))
      .catch(() => undefined);
  }, []);
  return version;
}

/** A command in a copyable block: its Copy button, and what copying did. */
function Command(props: {
  label: string;
  text: string;
  copied: string;
  onCopy: (node: HTMLElement | null) => void;
}) {
  const block = useRef<HTMLPreElement>(null);
  return (
    <>
      <div className="command">
        <pre ref={block}>{props.text}</pre>
        <button
          type="button"
          aria-label={`Copy the ${props.label}`}
          onClick={() => props.onCopy(block.current)}
        >
          Copy
        </button>
      </div>
      <p className="muted small" aria-live="polite">
        {props.copied}
      </p>
    </>
  );
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
  const version = useServerVersion();
  const titleId = useId();
  const [grant, setGrant] = useState<AgentCode | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("my-laptop");
  const [now, setNow] = useState(() => Date.now());
  const [copied, setCopied] = useState<{ which: string; message: string } | null>(null);

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
    // On phones and tablets a focused field pops the keyboard over the steps: focus it only
    // where there is a fine pointer and room.
    if (!touchOrSmall()) nameInput.current?.focus();
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

  /** Copies ``text``; where the browser will not, selects ``node`` for Ctrl+C instead. */
  async function copy(which: string, text: string, node: HTMLElement | null) {
    // Absent outside secure contexts (plain http on anything but localhost).
    const clipboard: Clipboard | undefined = navigator.clipboard;
    try {
      if (!clipboard) throw new Error("no clipboard");
      await clipboard.writeText(text);
      setCopied({ which, message: "Copied to the clipboard." });
    } catch {
      const selection = window.getSelection();
      if (node && selection) {
        const range = document.createRange();
        range.selectNodeContents(node);
        selection.removeAllRanges();
        selection.addRange(range);
      }
      setCopied({
        which,
        message:
          "This browser would not copy it: the command is selected, copy it with Ctrl+C (⌘C on a Mac).",
      });
    }
  }

  const said = (which: string) => (copied?.which === which ? copied.message : "");
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
      <p className="lead">
        The opencode on your laptop joins this workspace as a <em>local sandbox</em>: the team opens
        it here like any other, while it works with the laptop's files and tools. The agent dials
        out to this server, so the laptop needs no open port.
      </p>
      <p>
        The laptop needs Python 3.11 or newer, <strong>opencode</strong> installed, and a copy of
        the same version of cli-server as this server
        {version ? (
          <>
            {" "}
            (<strong className="server-version">{version}</strong>)
          </>
        ) : null}{" "}
        — ask your administrator for the source.
      </p>
      <ol className="steps">
        <li>
          <p>Install the agent, once, from the folder that holds that copy (./cli-server):</p>
          <Command
            label="install command"
            text={INSTALL}
            copied={said("install")}
            onCopy={(node) => void copy("install", INSTALL, node)}
          />
          <p className="muted">
            There is no lighter agent-only package yet: this installs the server's libraries too,
            into its own virtualenv, and uses only the agent.
          </p>
        </li>
        <li>
          <p>Start opencode in the folder it should work in:</p>
          <Command
            label="opencode command"
            text={OPENCODE}
            copied={said("opencode")}
            onCopy={(node) => void copy("opencode", OPENCODE, node)}
          />
        </li>
        <li>
          <p>Connect it to this workspace:</p>
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
              <p>
                The code expires in{" "}
                <time
                  dateTime={grant.expires_at}
                  title={new Date(grant.expires_at).toLocaleString()}
                  className="countdown"
                >
                  {Number.isFinite(left) ? countdown(left) : "10 minutes"}
                </time>
                , at <time dateTime={grant.expires_at}>{clock(grant.expires_at)}</time>; it works
                once.
              </p>
              <Command
                label="connect command"
                text={text}
                copied={said("connect")}
                onCopy={(node) => void copy("connect", text, node)}
              />
            </>
          )}
          {expired && <p className="warning">This code has expired.</p>}
        </li>
      </ol>
      <p>
        The sandbox shows up here as <em>local</em> and <em>running</em>. Later,{" "}
        <code>{AGENT_HOME}/bin/twistd -n cli-agent</code> reconnects with the saved credentials (in{" "}
        <code>~/.cli-server/agent.json</code>), no code needed.
      </p>
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
