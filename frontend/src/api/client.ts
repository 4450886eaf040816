// The one way the dashboard talks to the API: openapi-fetch typed by the generated schema.
// No page writes fetch() by hand; errors become ApiError with field messages for forms.
import createClient, { type Middleware } from "openapi-fetch";
import type { paths } from "./schema";

export type { components, paths } from "./schema";

const TOKEN_KEY = "fedlora.token";

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}
export function setToken(token: string | null): void {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Called when the API answers 401 to a signed-in request (expired or revoked token). */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(fn: () => void): void {
  onUnauthorized = fn;
}

const auth: Middleware = {
  onRequest({ request }) {
    const token = getToken();
    if (token) request.headers.set("Authorization", `Bearer ${token}`);
    return request;
  },
  onResponse({ response }) {
    if (response.status === 401 && getToken()) onUnauthorized();
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: window.location.origin });
api.use(auth);

/** Revokes the stored token on the server (POST /auth/logout: every token of this admin),
 * in the background; call before dropping it locally. A failure only leaves it to expire. */
export function revokeToken(): void {
  const token = getToken();
  if (!token) return;
  const headers = { Authorization: `Bearer ${token}` };
  api.POST("/api/v1/auth/logout", { headers }).catch(() => undefined);
}

/** One validation problem, as FastAPI/pydantic report it. */
interface ValidationItem {
  loc?: (string | number)[];
  msg?: string;
}

export class ApiError extends Error {
  readonly status: number;
  /** Messages keyed by field path without the "body." prefix, e.g. "dp.epsilon_budget". */
  readonly fields: Record<string, string>;

  constructor(status: number, message: string, fields: Record<string, string> = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields;
  }

  get offline(): boolean {
    return this.status === 0;
  }
}

function fieldKey(loc: (string | number)[]): string {
  const parts = loc[0] === "body" || loc[0] === "query" || loc[0] === "path" ? loc.slice(1) : loc;
  return parts.join(".");
}

/** Turns whatever the API answered into an ApiError with a sentence a person can act on. */
export function toApiError(status: number, body: unknown): ApiError {
  const detail = (body as { detail?: unknown } | null | undefined)?.detail;
  if (Array.isArray(detail)) {
    const fields: Record<string, string> = {};
    for (const item of detail as ValidationItem[]) {
      const key = fieldKey(item.loc ?? []);
      const msg = (item.msg ?? "Invalid value").replace(/^Value error, /, "");
      fields[key] = fields[key] ? `${fields[key]}; ${msg}` : msg;
    }
    const n = Object.keys(fields).length;
    return new ApiError(status, `The server rejected ${n} field${n === 1 ? "" : "s"}.`, fields);
  }
  if (typeof detail === "string") return new ApiError(status, detail);
  if (status === 401) return new ApiError(status, "Your session has ended. Sign in again.");
  if (status === 403) return new ApiError(status, "You are not allowed to do this.");
  if (status === 404) return new ApiError(status, "Not found. It may have been deleted.");
  if (status >= 500) return new ApiError(status, `The API failed (HTTP ${status}). Try again.`);
  return new ApiError(status, `Unexpected answer from the API (HTTP ${status}).`);
}

export const OFFLINE_MESSAGE =
  "Cannot reach the fedlora API. Check that the server is running and your network, then retry.";

/**
 * Awaits an openapi-fetch call and returns its data, or throws ApiError. A network failure
 * (server down, connection refused) becomes an ApiError with status 0.
 */
export async function call<T>(
  promise: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result: { data?: T; error?: unknown; response: Response };
  try {
    result = await promise;
  } catch (e) {
    if (e instanceof ApiError) throw e;
    throw new ApiError(0, OFFLINE_MESSAGE);
  }
  const { data, error, response } = result;
  if (!response.ok) {
    // A proxy in front of a stopped API answers 502/503/504 with an HTML page.
    if ([502, 503, 504].includes(response.status) && typeof error !== "object") {
      throw new ApiError(0, OFFLINE_MESSAGE);
    }
    throw toApiError(response.status, error);
  }
  return data as T;
}

export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

/** Saves a Blob answer (an adapter archive) under the name the server suggested. */
export function saveBlob(blob: Blob, response: Response, fallback: string): void {
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : fallback;
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
