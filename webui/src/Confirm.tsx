import { type ReactNode, useEffect, useId, useRef, useState } from "react";

interface DialogProps {
  open: boolean;
  question: string;
  confirmLabel: string;
  onConfirm: () => void;
  onCancel: () => void;
  /** More about what happens, under the question. */
  children?: ReactNode;
  /** When set, the confirm button stays disabled until this exact text is typed. */
  typeToConfirm?: string;
  /** "danger" (red) for what cannot be undone, "primary" otherwise. */
  tone?: "danger" | "primary";
}

/** A question in an accessible native modal dialog, opened and closed by its owner. */
export function ConfirmDialog({
  open,
  question,
  confirmLabel,
  onConfirm,
  onCancel,
  children,
  typeToConfirm,
  tone = "danger",
}: DialogProps) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [typed, setTyped] = useState("");
  const inputId = useId();
  useEffect(() => {
    const element = dialog.current;
    if (!element) return;
    if (open && !element.open) {
      setTyped("");
      element.showModal?.();
    } else if (!open && element.open) element.close?.();
  }, [open]);
  const ready = typeToConfirm === undefined || typed === typeToConfirm;
  return (
    <dialog
      ref={dialog}
      className="card confirm"
      aria-label={question}
      onClose={() => {
        if (open) onCancel();
      }}
    >
      <p className="question">{question}</p>
      {children}
      {typeToConfirm !== undefined && (
        <label htmlFor={inputId} className="type-to-confirm">
          <span>
            Type <strong>{typeToConfirm}</strong> to confirm
          </span>
          <input
            id={inputId}
            autoComplete="off"
            spellCheck={false}
            value={typed}
            onChange={(e) => setTyped(e.target.value)}
          />
        </label>
      )}
      <div className="row end">
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
        <button
          type="button"
          className={tone}
          disabled={!ready}
          onClick={() => {
            if (ready) onConfirm();
          }}
        >
          {confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

interface Props {
  label: string;
  question: string;
  confirmLabel: string;
  onConfirm: () => void;
  className?: string;
  disabled?: boolean;
}

/** A button that asks first, in an accessible native dialog. */
export function ConfirmButton({
  label,
  question,
  confirmLabel,
  onConfirm,
  className,
  disabled,
}: Props) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button
        type="button"
        className={className ?? "danger"}
        disabled={disabled}
        onClick={() => setOpen(true)}
      >
        {label}
      </button>
      <ConfirmDialog
        open={open}
        question={question}
        confirmLabel={confirmLabel}
        onCancel={() => setOpen(false)}
        onConfirm={() => {
          setOpen(false);
          onConfirm();
        }}
      />
    </>
  );
}
