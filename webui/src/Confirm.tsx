import { useRef } from "react";

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
  const dialog = useRef<HTMLDialogElement>(null);
  return (
    <>
      <button
        type="button"
        className={className ?? "danger"}
        disabled={disabled}
        onClick={() => dialog.current?.showModal?.()}
      >
        {label}
      </button>
      <dialog ref={dialog} className="card" aria-label={question}>
        <p>{question}</p>
        <div className="row end">
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
          <button
            type="button"
            className="danger"
            onClick={() => {
              dialog.current?.close();
              onConfirm();
            }}
          >
            {confirmLabel}
          </button>
        </div>
      </dialog>
    </>
  );
}
