// Runs last (file order): stops the real API and checks the dashboard says so.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAS_API, openBrowser, screenshot, signIn } from "./harness.mjs";

const pid = Number(process.env.FEDLORA_API_PID ?? 0);

test("stopping the API mid-session shows a clear message", { skip: HAS_API && pid ? false : "needs the API" }, async () => {
  const b = await openBrowser();
  try {
    await signIn(b.page);
    await b.page.getByRole("heading", { name: "Federations", level: 1 }).waitFor();
    await b.page.getByRole("link", { name: "Organizations" }).click();
    await b.page.getByRole("heading", { name: "Organizations", level: 1 }).waitFor();
    await b.page.getByRole("link", { name: "Federations", exact: true }).first().click();
    await b.page.getByRole("heading", { name: "Federations", level: 1 }).waitFor();

    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 50; i++) {
      try {
        process.kill(pid, 0);
        await new Promise((r) => setTimeout(r, 100));
      } catch {
        break;
      }
    }
    await new Promise((r) => setTimeout(r, 5_500)); // cached data goes stale
    await b.page.getByRole("link", { name: "Organizations" }).click();
    const alert = b.page.getByRole("alert").filter({ hasText: "Cannot reach the fedlora API" });
    await alert.waitFor();
    await screenshot(b.page, "api-stopped");
    assert.deepEqual(b.errors.map(String), []);
  } finally {
    await b.close();
  }
});
