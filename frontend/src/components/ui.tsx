import { useEffect, useId, useState, type ReactNode } from "react";

export function PageHeader({
  title,
  subtitle,
  actions,
}: {
  title: ReactNode;
  subtitle?: ReactNode;
  actions?: ReactNode;
}) {
  const text = typeof title === "string" ? title : null;
  useEffect(() => {
    if (text) document.title = `${text} · fedlora`;
  }, [text]);
  return (
    <header className="page-header">
      <div>
        <h1>{title}</h1>
        {subtitle && <p className="muted">{subtitle}</p>}
      </div>
      {actions && <div className="page-actions">{actions}</div>}
    </header>
  );
}

export function Section({ title, children, actions }: { title: string; children: ReactNode; actions?: ReactNode }) {
  const id = useId();
  return (
    <section className="card" aria-labelledby={id}>
      <div className="card-head">
        <h2 id={id}>{title}</h2>
        {actions}
      </div>
      {children}
    </section>
  );
}

const STATUS_TONE: Record<string, string> = {
  draft: "neutral",
  running: "info",
  open: "info",
  leased: "info",
  aggregating: "warn",
  paused: "warn",
  pending: "neutral",
  completed: "ok",
  reported: "ok",
  uploaded: "ok",
  active: "ok",
  failed: "bad",
  cancelled: "bad",
  dropped: "bad",
  revoked: "bad",
};

export function StatusBadge({ status }: { status: string }) {
  return <span className={`badge badge-${STATUS_TONE[status] ?? "neutral"}`}>{status}</span>;
}

/** A labelled form field with its help text and the server's message for it. */
export function Field({
  label,
  help,
  error,
  required,
  children,
}: {
  label: string;
  help?: string | null;
  error?: string;
  /** Marks the label visually; the server decides what is really required. */
  required?: boolean;
  children: (props: { id: string; "aria-describedby"?: string; "aria-invalid"?: boolean }) => ReactNode;
}) {
  const id = useId();
  const helpId = help ? `${id}-help` : undefined;
  const errId = error ? `${id}-err` : undefined;
  const describedBy = [helpId, errId].filter(Boolean).join(" ") || undefined;
  return (
    <div className={`field${error ? " field-invalid" : ""}`}>
      <div className="label-row">
        <label htmlFor={id}>{label}</label>
        {required && (
          <span className="req" aria-hidden="true" title="required">
            *
          </span>
        )}
      </div>
      {children({ id, "aria-describedby": describedBy, "aria-invalid": error ? true : undefined })}
      {help && (
        <p className="help" id={helpId}>
          {help}
        </p>
      )}
      {error && (
        <p className="field-error" id={errId}>
          {error}
        </p>
      )}
    </div>
  );
}

export function CopyButton({ text, label = "Copy" }: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  return (
    <button
      type="button"
      className="btn btn-small"
      onClick={async () => {
        try {
          await navigator.clipboard.writeText(text);
        } catch {
          // Clipboard blocked (insecure origin): select-all fallback via a hidden textarea.
          const ta = document.createElement("textarea");
          ta.value = text;
          document.body.append(ta);
          ta.select();
          document.execCommand("copy");
          ta.remove();
        }
        setCopied(true);
        setTimeout(() => setCopied(false), 2000);
      }}
    >
      {copied ? "Copied" : label}
    </button>
  );
}

/** A secret shown exactly once (join token, client key) with a copy button. */
export function SecretOnce({ label, value, onDone }: { label: string; value: string; onDone: () => void }) {
  const id = useId();
  return (
    <div className="secret" role="region" aria-labelledby={id}>
      <p id={id} className="secret-title">
        {label}
      </p>
      <p className="muted">Shown only once. Copy it now; the server keeps only a hash.</p>
      <div className="secret-row">
        <input aria-label={label} readOnly value={value} onFocus={(e) => e.currentTarget.select()} />
        <CopyButton text={value} />
        <button type="button" className="btn btn-small btn-ghost" onClick={onDone}>
          Done
        </button>
      </div>
    </div>
  );
}
