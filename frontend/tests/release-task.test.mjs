// An admin releases a task a client will not finish, from the federation page: the task shows
// who released it and why, and the round goes on without it (here: its only task, so it fails at
// once and the real worker opens the next round) instead of waiting out the lease.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAS_API, MODEL_SPEC, adminApi, enroll, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

const API = process.env.FEDLORA_API_DIRECT_URL;
const ready = HAS_API && API && process.env.FEDLORA_WORKER === "1";
const opts = { skip: ready ? false : "needs the API and a worker (run scripts/frontend-test)", timeout: 180_000 };

async function until(what, check, seconds = 90) {
  for (let i = 0; i < seconds * 4; i++) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out waiting for ${what}`);
}

test("release a client's task from the federation page; the round stops waiting for it", opts, async () => {
  const api = await adminApi();
  const org = await api.post("/organizations", { name: unique("Release org") });
  const { token } = await api.post("/join-tokens", { organization_id: org.id });
  const name = unique("gone-client");
  const client = await enroll(token, name);
  const fedName = unique("Release");
  const fed = await api.post("/federations", {
    name: fedName,
    base_model_id: "tiny-llama",
    task_type: "causal_lm",
    model: MODEL_SPEC,
    target_modules: ["q_proj", "v_proj"],
    strategy: "fedavg",
    global_rank: 4,
    num_rounds: 2,
    clients_per_round: 1,
    min_clients: 1,
    round_deadline_seconds: 3600,
    dp: { mode: "none" },
  });
  await api.post(`/federations/${fed.id}/memberships`, { client_id: client.client_id, rank_budget: 4 });
  const reported = await fetch(`${API}/api/v1/client/memberships/${fed.id}`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${client.api_key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ fingerprint: MODEL_SPEC.fingerprint }),
  });
  assert.equal(reported.status, 200, await reported.text());
  await api.post(`/federations/${fed.id}/start`);
  // The worker opens round 1 with a task for the client, which never takes it.
  const first = await until("round 1's task", async () => (await api.get(`/federations/${fed.id}/tasks`)).data[0]);
  assert.equal(first.status, "pending");

  const b = await openBrowser();
  try {
    await signIn(b.page);
    await b.page.getByRole("heading", { name: "Federations", level: 1 }).waitFor();
    await b.page.getByRole("link", { name: fedName }).click();
    const timeline = b.page.getByRole("list", { name: "Rounds" });
    const round = (n) => timeline.getByRole("listitem").filter({ has: b.page.getByText(`Round ${n}`, { exact: true }) });
    await round(1).getByRole("button", { name: `Release ${name}'s task in round 1` }).click();
    const form = b.page.getByRole("form", { name: `Release ${name}'s task in round 1` });
    await form.getByLabel("Reason").fill("the client's disk died");
    await screenshot(b.page, "release-task-form");
    await form.getByRole("button", { name: "Release task" }).click();

    await round(1).getByText(`${name}'s task released by admin`).waitFor();
    await round(1).getByText("the client's disk died").waitFor();
    await round(1).getByText("failed", { exact: true }).waitFor(); // nothing left to wait for
    await round(1).getByText(/every task ended with 0 update\(s\)/).waitFor();
    assert.equal(await round(1).getByText(/stragglers/).count(), 0); // released, not straggling
    // the worker opens round 2; its task can be released too
    await round(2).getByRole("button", { name: `Release ${name}'s task in round 2` }).waitFor({ timeout: 60_000 });
    await screenshot(b.page, "release-task-done");
    assert.deepEqual(b.errors, []);
  } finally {
    await b.close();
  }
  const released = (await api.get(`/federations/${fed.id}/tasks`)).data.find((t) => t.id === first.id);
  assert.equal(released.status, "released");
  assert.equal(released.released_by, "admin");
  assert.equal(released.release_reason, "the client's disk died");
  await api.post(`/federations/${fed.id}/cancel`);
});
