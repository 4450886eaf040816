import { useState, type FormEvent } from "react";
import { ApiError, errorMessage } from "../api/client";
import { useAuth } from "../auth";
import { Field } from "../components/ui";

export function SignIn() {
  const { signIn, notice } = useAuth();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await signIn(email, password);
    } catch (err) {
      setError(
        err instanceof ApiError && (err.status === 401 || err.status === 400)
          ? "Wrong email or password."
          : errorMessage(err),
      );
    } finally {
      setBusy(false);
    }
  }

  return (
    <div className="signin">
      <main className="card">
        <div className="brand">
          <span className="brand-mark" aria-hidden="true">
            f
          </span>
          fedlora
        </div>
        <h1>Sign in</h1>
        <p className="muted">Admin console for federated LoRA fine-tuning.</p>
        {notice && !error && (
          <p className="banner banner-warn" role="status">
            {notice}
          </p>
        )}
        <form className="stack" onSubmit={submit} style={{ marginTop: "1.2rem" }} noValidate>
          <Field label="Email">
            {(p) => (
              <input {...p} type="email" autoComplete="username" required value={email} onChange={(e) => setEmail(e.target.value)} />
            )}
          </Field>
          <Field label="Password">
            {(p) => (
              <input
                {...p}
                type="password"
                autoComplete="current-password"
                required
                value={password}
                onChange={(e) => setPassword(e.target.value)}
              />
            )}
          </Field>
          {error && (
            <p className="banner banner-error" role="alert">
              {error}
            </p>
          )}
          <button type="submit" className="btn btn-primary" disabled={busy || !email || !password}>
            {busy ? "Signing in…" : "Sign in"}
          </button>
        </form>
      </main>
    </div>
  );
}
