// Loading, empty and error states shared by every page.
import { Component, type ReactNode } from "react";
import { ApiError, errorMessage, OFFLINE_MESSAGE } from "../api/client";

export function Loading({ label = "Loading" }: { label?: string }) {
  return (
    <div className="state state-loading" role="status" aria-live="polite">
      <span className="spinner" aria-hidden="true" />
      <span>{label}…</span>
    </div>
  );
}

export function Empty({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <div className="state state-empty">
      <p className="state-title">{title}</p>
      {children && <div className="state-body">{children}</div>}
    </div>
  );
}

export function ErrorState({ error, retry }: { error: unknown; retry?: () => void }) {
  const offline = error instanceof ApiError && error.offline;
  return (
    <div className="state state-error" role="alert">
      <p className="state-title">{offline ? "API unreachable" : "Something went wrong"}</p>
      <p className="state-body">{errorMessage(error)}</p>
      {retry && (
        <button type="button" className="btn" onClick={retry}>
          Retry
        </button>
      )}
    </div>
  );
}

/** Renders loading / error / empty / data for one query. */
export function QueryView<T>({
  query,
  label,
  isEmpty,
  empty,
  children,
}: {
  query: { data?: T; error: unknown; isPending: boolean; refetch: () => unknown };
  label: string;
  isEmpty?: (data: T) => boolean;
  empty?: ReactNode;
  children: (data: T) => ReactNode;
}) {
  if (query.isPending) return <Loading label={`Loading ${label}`} />;
  if (query.error && query.data === undefined)
    return <ErrorState error={query.error} retry={() => void query.refetch()} />;
  const data = query.data as T;
  if (isEmpty?.(data)) return <>{empty}</>;
  return (
    <>
      {query.error != null && (
        <p className="banner banner-warn" role="alert">
          Showing the last data received. {errorMessage(query.error)}
        </p>
      )}
      {children(data)}
    </>
  );
}

/** Catches render errors and failed page-chunk loads (API server stopped mid-session). */
export class PageErrorBoundary extends Component<{ children: ReactNode; resetKey: string }, { error: unknown }> {
  state = { error: null as unknown };

  static getDerivedStateFromError(error: unknown) {
    return { error };
  }

  componentDidUpdate(prev: { resetKey: string }) {
    if (prev.resetKey !== this.props.resetKey && this.state.error) this.setState({ error: null });
  }

  render() {
    const { error } = this.state;
    if (!error) return this.props.children;
    const chunk = error instanceof Error && /dynamically imported module|Importing a module script failed|Failed to fetch/i.test(error.message);
    return (
      <ErrorState
        error={chunk ? new ApiError(0, OFFLINE_MESSAGE) : error}
        retry={() => (chunk ? window.location.reload() : this.setState({ error: null }))}
      />
    );
  }
}
