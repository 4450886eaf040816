// The dashboard without a reachable API: a clear message, never a blank page.
import { test } from "node:test";
import assert from "node:assert/strict";
import { openBrowser, screenshot } from "./harness.mjs";

test("sign-in page renders with labelled controls", async () => {
  const b = await openBrowser();
  try {
    await b.page.goto("/");
    await b.page.getByRole("heading", { name: "Sign in" }).waitFor();
    assert.equal(await b.page.getByLabel("Email").count(), 1);
    assert.equal(await b.page.getByLabel("Password").count(), 1);
    await screenshot(b.page, "sign-in");
    assert.deepEqual(b.errors, []);
  } finally {
    await b.close();
  }
});

test("an API outage shows a clear message", async () => {
  const b = await openBrowser();
  try {
    // Every API call fails at the network level, as when the server is down.
    await b.page.route("**/api/**", (route) => route.abort("connectionrefused"));
    await b.page.goto("/");
    await b.page.getByLabel("Email").fill("admin@example.com");
    await b.page.getByLabel("Password").fill("whatever");
    await b.page.getByRole("button", { name: "Sign in" }).click();
    const alert = b.page.getByRole("alert");
    await alert.waitFor();
    assert.match(await alert.innerText(), /Cannot reach the fedlora API/);
    await screenshot(b.page, "sign-in-api-down");

    // Signed in (a stored token) but the API is down: the page says so instead of going blank.
    await b.page.evaluate(() => sessionStorage.setItem("fedlora.token", "stale"));
    await b.page.goto("/federations");
    const state = b.page.getByRole("alert");
    await state.waitFor();
    assert.match(await state.innerText(), /API unreachable/);
    assert.equal(await b.page.getByRole("button", { name: "Retry" }).count(), 1);
    await screenshot(b.page, "federations-api-down");
    assert.deepEqual(b.errors, []);
  } finally {
    await b.close();
  }
});
