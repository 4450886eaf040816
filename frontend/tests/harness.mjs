// Shared set-up of the browser tests: Debian's Chromium driven by playwright-core (no browser
// download), a fresh profile per run, screenshots under test-results/ (git-ignored).
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { request as httpRequest } from "node:http";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const RESULTS = resolve(here, "../test-results");
export const BASE_URL = process.env.FEDLORA_UI_URL ?? "http://127.0.0.1:4173";
export const ADMIN_EMAIL = process.env.FEDLORA_BOOTSTRAP_ADMIN_EMAIL ?? "admin@example.com";
export const ADMIN_PASSWORD = process.env.FEDLORA_BOOTSTRAP_ADMIN_PASSWORD ?? "admin-password-for-tests";
/** Set by scripts/frontend-test when a real API answers behind BASE_URL. */
export const HAS_API = process.env.FEDLORA_UI_HAS_API === "1";

const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** A new browser context with its own empty profile; call close() when done. */
export async function openBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "fedlora-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: ARGS,
    viewport: { width: 1360, height: 900 },
    baseURL: BASE_URL,
    acceptDownloads: true,
    colorScheme: process.env.FEDLORA_UI_COLOR_SCHEME === "dark" ? "dark" : "light",
  });
  context.setDefaultTimeout(15_000);
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  return {
    context,
    page,
    /** Uncaught exceptions in the page (a test fails on any). */
    errors,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export async function screenshot(page, name) {
  mkdirSync(RESULTS, { recursive: true });
  await page.screenshot({ path: join(RESULTS, `${name}.png`), fullPage: true });
}

export async function signIn(page, email = ADMIN_EMAIL, password = ADMIN_PASSWORD) {
  await page.goto("/");
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** A name unique to this run, so tests never collide with each other's data. */
export function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
}

/** Where tests set up data: the API itself when the script says where it is. */
const API_URL = process.env.FEDLORA_API_DIRECT_URL ?? BASE_URL;

/**
 * A fetch-like request on a fresh connection each time: test set-up waits seconds between
 * calls (CLI processes start), long enough for the server to close an idle keep-alive socket
 * just as a pooled fetch() reuses it.
 */
function fetchOrSay(url, init = {}) {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(url, { method: init.method ?? "GET", headers: init.headers, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        const text = Buffer.concat(chunks).toString();
        resolvePromise({
          ok: res.statusCode >= 200 && res.statusCode < 300,
          status: res.statusCode,
          text: async () => text,
          json: async () => JSON.parse(text),
        });
      });
    });
    req.on("error", (e) => reject(new Error(`${init.method ?? "GET"} ${url}: ${e.message}`)));
    req.end(init.body);
  });
}

/** The admin side of the API, for setting up data a test does not drive through the UI. */
export async function adminApi() {
  const login = await fetchOrSay(`${API_URL}/api/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: ADMIN_EMAIL, password: ADMIN_PASSWORD }),
  });
  if (!login.ok) throw new Error(`admin login failed: ${login.status} ${await login.text()}`);
  const { access_token } = await login.json();
  async function req(method, path, body) {
    const res = await fetchOrSay(`${API_URL}/api/v1${path}`, {
      method,
      headers: { Authorization: `Bearer ${access_token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }
  return {
    token: access_token,
    get: (path) => req("GET", path),
    post: (path, body) => req("POST", path, body ?? {}),
  };
}

/** Enrolls a client with a join token, as the SDK does; returns {client_id, api_key}. */
export async function enroll(joinToken, name, hardware = { accelerator: "NVIDIA A10", memory_gb: 24 }) {
  const res = await fetchOrSay(`${API_URL}/api/v1/enroll`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ join_token: joinToken, name, hardware }),
  });
  if (!res.ok) throw new Error(`enroll failed: ${res.status} ${await res.text()}`);
  return res.json();
}

/** The text of the elements that describe a control (help text and its error message). */
export async function description(locator) {
  return locator.evaluate((el) =>
    (el.getAttribute("aria-describedby") ?? "")
      .split(/\s+/)
      .filter(Boolean)
      .map((id) => document.getElementById(id)?.textContent ?? "")
      .join(" "),
  );
}

/** A valid model spec, as `fedlora-client inspect` prints it for a tiny model. */
export const MODEL_SPEC = {
  fingerprint: "ab".repeat(32),
  modules: { "model.layers.0.self_attn.q_proj": [32, 32], "model.layers.0.self_attn.v_proj": [32, 32] },
};

/** Fraction of a chart's canvas pixels that are drawn (not transparent): 0 means blank. */
export async function canvasInk(chart) {
  return chart.locator("canvas").first().evaluate((c) => {
    const { data } = c.getContext("2d").getImageData(0, 0, c.width, c.height);
    let ink = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
    return ink / (c.width * c.height);
  });
}

/** The rows of a chart's data table (its accessible twin). */
export async function chartRows(page, label) {
  const rows = page.getByRole("table", { name: label }).locator("tbody tr");
  return rows.evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent)));
}
