// A running sandbox's previews: the ports its dev servers listen on, each opened in a new tab
// at its own address, oc-{id}-p{port}.{base domain}, signed in there by a one-time link.
import { type FormEvent, useCallback, useEffect, useRef, useState } from "react";
import { ApiError, api, describe, type Ports, type Sandbox } from "./api";
import { useVisiblePoll } from "./poll";
import { useCopy } from "./useCopy";

/** The port opencode itself serves on: its own subdomain, never a preview. */
export const OPENCODE_PORT = 4096;
export const MIN_PORT = 1024;
export const MAX_PORT = 65535;

/** Why ``text`` is not a port one may preview, or null when it is one. */
export function portProblem(text: string): string | null {
  const trimmed = text.trim();
  if (trimmed === "") return "Type a port number.";
  if (!/^\d+$/.test(trimmed)) return "A port is a whole number, like 5173.";
  const port = Number(trimmed);
  if (port < MIN_PORT || port > MAX_PORT) return `Ports ${MIN_PORT}–${MAX_PORT} can be previewed.`;
  if (port === OPENCODE_PORT) return "4096 is opencode itself: use the sandbox's Open.";
  return null;
}

/** The preview address of ``port`` next to a sandbox's own address (oc-{id}.{base} →
 * oc-{id}-p{port}.{base}); null when that address is not one of ours. */
export function previewUrl(sandboxUrl: string | null, port: number): string | null {
  if (!sandboxUrl) return null;
  let url: URL;
  try {
    url = new URL(sandboxUrl);
  } catch {
    return null;
  }
  const match = /^(oc-[^.]+)\.(.+)$/.exec(url.host);
  if (!match) return null;
  return `${url.protocol}//${match[1]}-p${port}.${match[2]}/`;
}

/** Opens ``url()``'s answer in a new tab: the tab first (browsers allow that only during the
 * click), then its address once the server has minted the one-time link. The tab loses its
 * ``opener``: what a sandbox serves must not be able to navigate the dashboard's tab. */
export async function openInNewTab(url: () => Promise<string>): Promise<void> {
  const tab = window.open("about:blank", "_blank");
  if (tab) tab.opener = null;
  try {
    const target = await url();
    if (tab) tab.location.href = target;
    else window.location.href = target;
  } catch (e) {
    tab?.close();
    throw e;
  }
}

function isPorts(data: unknown): data is Ports {
  return (
    typeof data === "object" &&
    data !== null &&
    Array.isArray((data as Ports).ports) &&
    (data as Ports).ports.every((p) => Number.isInteger(p))
  );
}

interface Props {
  sandbox: Sandbox;
  /** How often the listening ports are read again while the page is visible. */
  pollMs?: number;
}

export function Previews({ sandbox, pollMs = 5000 }: Props) {
  const [ports, setPorts] = useState<Ports | null>(null);
  const [listError, setListError] = useState<string | null>(null);
  const [openError, setOpenError] = useState<string | null>(null);
  // Ports typed here stay listed (with their copyable address) while the card is shown.
  const [typed, setTyped] = useState<number[]>([]);
  const busy = useRef(false);

  const load = useCallback(async () => {
    if (busy.current) return; // (a slow answer is not asked for again meanwhile)
    busy.current = true;
    try {
      const found: unknown = await api.ports(sandbox.id);
      if (!isPorts(found)) throw new Error("not a list of ports");
      setPorts(found);
      setListError(null);
    } catch (e) {
      // (409: it stopped running a moment ago; the card follows at its next read)
      if (!(e instanceof ApiError && e.status === 409)) setListError(describe(e));
    } finally {
      busy.current = false;
    }
  }, [sandbox.id]);

  useEffect(() => {
    void load();
  }, [load]);
  useVisiblePoll(load, pollMs);

  async function open(port: number) {
    setOpenError(null);
    try {
      await openInNewTab(async () => (await api.open(sandbox.id, port)).url);
    } catch (e) {
      setOpenError(describe(e));
    }
  }

  const sharedOnly = ports?.shared_only === true || (ports === null && sandbox.is_local);
  const listed = ports?.ports ?? [];
  const shown = [...listed, ...typed.filter((p) => !listed.includes(p))].sort((a, b) => a - b);
  const canType = !sharedOnly && (ports === null || !ports.listed || listed.length === 0);
  const headingId = `previews-${sandbox.id}`;

  return (
    <section className="previews" aria-labelledby={headingId}>
      <div className="row between tight">
        <h2 id={headingId} className="previews-heading">
          Previews
        </h2>
        {sharedOnly && <span className="muted small">shared by the laptop (--allow-port)</span>}
      </div>
      {shown.length > 0 && (
        <ul className="plain preview-list">
          {shown.map((port) => (
            <PreviewRow
              key={port}
              port={port}
              address={previewUrl(sandbox.url, port)}
              onOpen={() => void open(port)}
            />
          ))}
        </ul>
      )}
      <p className="muted small previews-note">
        {emptyNote(ports, sharedOnly, listed.length, listError !== null)}
      </p>
      {listError && (
        <p className="muted small" role="status">
          Its ports could not be listed: {listError}
        </p>
      )}
      {openError && (
        <p className="error small" role="alert">
          {openError}
        </p>
      )}
      {canType && (
        <PortField
          sandboxId={sandbox.id}
          sandboxName={sandbox.name}
          onOpen={(port) => {
            setTyped((all) => (all.includes(port) ? all : [...all, port]));
            void open(port);
          }}
        />
      )}
    </section>
  );
}

/** What the area says under its list: what is shown, and what is not. */
function emptyNote(
  ports: Ports | null,
  sharedOnly: boolean,
  count: number,
  failed: boolean,
): string {
  if (sharedOnly) {
    if (ports === null) return failed ? "" : "Reading the laptop's shared ports…";
    return count === 0
      ? "The laptop shares no ports: its agent shares one with --allow-port 5173."
      : "Other ports of the laptop are not shared.";
  }
  if (ports === null) return failed ? "Type a port to open it." : "Looking for listening ports…";
  if (!ports.listed) return "This backend cannot see which ports listen: type one to open it.";
  if (count === 0)
    return "Nothing listens yet. Start a dev server (npm run dev, python -m http.server 8000) and it shows here.";
  return "Ports listening in this sandbox; opencode's own is left out.";
}

function PreviewRow({
  port,
  address,
  onOpen,
}: {
  port: number;
  address: string | null;
  onOpen: () => void;
}) {
  return (
    <li className="preview">
      <code className="port">{port}</code>
      {address && (
        <span className="preview-address mono small muted" title={address}>
          {address}
        </span>
      )}
      <span className="row tight preview-actions">
        <button
          type="button"
          className="small compact"
          aria-label={`Open port ${port}`}
          title="Opens it in a new tab"
          onClick={onOpen}
        >
          Open
        </button>
        {address && <CopyButton text={address} label={`Copy link to port ${port}`} />}
      </span>
    </li>
  );
}

function CopyButton({ text, label }: { text: string; label: string }) {
  // (with no clipboard, the address is shown beside the button)
  const [copied, copy] = useCopy(text);

  return (
    <>
      <button
        type="button"
        className="small compact"
        aria-label={label}
        onClick={() => void copy()}
      >
        {copied === "yes" ? "Copied" : "Copy link"}
      </button>
      <span className="sr-only" aria-live="polite">
        {copied === "yes" ? "Link copied" : copied === "no" ? `Copy it by hand: ${text}` : ""}
      </span>
    </>
  );
}

function PortField({
  sandboxId,
  sandboxName,
  onOpen,
}: {
  sandboxId: string;
  sandboxName: string;
  onOpen: (port: number) => void;
}) {
  const [text, setText] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const errorId = `port-error-${sandboxId}`;

  function submit(event: FormEvent) {
    event.preventDefault();
    const found = portProblem(text);
    setProblem(found);
    if (found === null) {
      onOpen(Number(text.trim()));
      setText("");
    }
  }

  return (
    <form className="row tight port-field" onSubmit={submit} noValidate>
      <label>
        <span className="sr-only">Port of {sandboxName} to open</span>
        <input
          name="port"
          inputMode="numeric"
          autoComplete="off"
          placeholder="Port, e.g. 5173"
          value={text}
          aria-invalid={problem ? true : undefined}
          aria-describedby={problem ? errorId : undefined}
          onChange={(e) => {
            setText(e.target.value);
            setProblem(null);
          }}
        />
      </label>
      <button type="submit" className="small compact">
        Open port
      </button>
      {problem && (
        <span id={errorId} className="error field-error" role="alert">
          {problem}
        </span>
      )}
    </form>
  );
}
