import { createElement, lazy, Suspense, useEffect, useRef, type ComponentType, type ReactNode } from "react";
import { Link, Redirect, Route, Switch, useLocation } from "wouter";
import { useQueryClient } from "@tanstack/react-query";
import { revokeToken, setUnauthorizedHandler } from "./api/client";
import { useAuth, AuthProvider } from "./auth";
import { Loading, PageErrorBoundary } from "./components/states";
import { SignIn } from "./pages/SignIn";
import { FederationsPage } from "./pages/Federations";

/**
 * A page loaded on demand that renders without suspending once its code is in: React 19
 * holds a revealed Suspense boundary back for up to 300 ms, which would delay the page's
 * data requests, so the entry point preloads the page of the first URL (see preloadRoute).
 */
function page<P extends object>(factory: () => Promise<{ default: ComponentType<P> }>) {
  let loaded: ComponentType<P> | null = null;
  const load = () => factory().then((m) => (loaded = m.default));
  const Lazy = lazy(() => load().then((c) => ({ default: c })));
  const Page = (props: P) => createElement(loaded ?? Lazy, props);
  Page.preload = load;
  return Page;
}

// Pages beyond the landing list load on demand; the federation page carries the charts.
const NewFederationPage = page(() => import("./pages/NewFederation"));
const FederationPage = page(() => import("./pages/Federation"));
const OrganizationsPage = page(() => import("./pages/Organizations"));
const OrganizationPage = page(() => import("./pages/Organization"));
const ArtifactsPage = page(() => import("./pages/Artifacts"));

/** Loads the code of the page at `path` (call before the first render). */
export function preloadRoute(path: string): Promise<unknown> {
  if (path === "/federations/new") return NewFederationPage.preload();
  if (path.startsWith("/federations/")) return FederationPage.preload();
  if (path === "/organizations") return OrganizationsPage.preload();
  if (path.startsWith("/organizations/")) return OrganizationPage.preload();
  if (path.startsWith("/artifacts")) return ArtifactsPage.preload();
  return Promise.resolve();
}

function NavLink({ href, children }: { href: string; children: ReactNode }) {
  const [location] = useLocation();
  const first = useRef(true);
  // After client-side navigation, move focus to the new page so keyboard and screen-reader
  // users start at its top (as on a full page load).
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.getElementById("main")?.focus();
  }, [location]);
  const active = location === href || location.startsWith(`${href}/`);
  return (
    <Link href={href} aria-current={active ? "page" : undefined}>
      {children}
    </Link>
  );
}

function Shell({ children }: { children: ReactNode }) {
  const { email, signOut } = useAuth();
  const [location] = useLocation();
  return (
    <div className="app">
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <aside className="sidebar">
        <div className="brand">
          <span className="brand-mark" aria-hidden="true">
            f
          </span>
          fedlora
        </div>
        <nav className="nav" aria-label="Main">
          <NavLink href="/federations">Federations</NavLink>
          <NavLink href="/organizations">Organizations</NavLink>
          <NavLink href="/artifacts">Artifacts</NavLink>
        </nav>
        <div className="sidebar-foot">
          <span className="muted" title={email ?? undefined}>
            {email}
          </span>
          <button
            type="button"
            className="btn btn-small"
            onClick={() => {
              revokeToken();
              signOut();
            }}
          >
            Sign out
          </button>
        </div>
      </aside>
      <main id="main" tabIndex={-1}>
        <PageErrorBoundary resetKey={location}>
          <Suspense fallback={<Loading label="Loading page" />}>{children}</Suspense>
        </PageErrorBoundary>
      </main>
    </div>
  );
}

function Routes() {
  const { signedIn, signOut } = useAuth();
  const queryClient = useQueryClient();
  useEffect(() => {
    setUnauthorizedHandler(() => {
      queryClient.clear();
      signOut("Your session has ended. Sign in again.");
    });
  }, [queryClient, signOut]);

  if (!signedIn) return <SignIn />;
  return (
    <Shell>
      <Switch>
        <Route path="/">
          <Redirect to="/federations" />
        </Route>
        <Route path="/federations" component={FederationsPage} />
        <Route path="/federations/new" component={NewFederationPage} />
        <Route path="/federations/:id">{(p) => <FederationPage id={p.id} />}</Route>
        <Route path="/organizations" component={OrganizationsPage} />
        <Route path="/organizations/:id">{(p) => <OrganizationPage id={p.id} />}</Route>
        <Route path="/artifacts" component={ArtifactsPage} />
        <Route>
          <h1>Page not found</h1>
          <p>
            <Link href="/federations">Go to federations</Link>
          </p>
        </Route>
      </Switch>
    </Shell>
  );
}

export function App() {
  return (
    <AuthProvider>
      <Routes />
    </AuthProvider>
  );
}
