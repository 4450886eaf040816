// Runs after the round test (file order), before the API outage: with the real worker alive the
// federation pages say nothing about it; once it stops, they say that no aggregation worker has
// reported since when, and what that means.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAS_API, MODEL_SPEC, adminApi, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

const pid = Number(process.env.FEDLORA_WORKER_PID ?? 0);
const opts = { skip: HAS_API && pid ? false : "needs the API and its worker (run scripts/frontend-test)", timeout: 120_000 };

async function stopped(p) {
  for (let i = 0; i < 300; i++) {
    try {
      process.kill(p, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`worker ${p} did not stop within 30 s`);
}

/** Waits until the API sees the worker (run alone, this test starts while it still loads). */
async function workerReported() {
  const url = `${process.env.FEDLORA_API_DIRECT_URL}/healthz/workers`;
  for (let i = 0; i < 180; i++) {
    if ((await fetch(url)).ok) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error("the worker never reported to the API");
}

test("no worker: the federation pages say since when; with one they say nothing", opts, async () => {
  await workerReported();
  const api = await adminApi();
  const fed = await api.post("/federations", {
    name: unique("NoWorker"),
    base_model_id: "tiny-llama",
    task_type: "causal_lm",
    model: MODEL_SPEC,
    target_modules: ["q_proj", "v_proj"],
    strategy: "fedavg",
    global_rank: 4,
    num_rounds: 2,
    clients_per_round: 1,
    min_clients: 1,
    round_deadline_seconds: 600,
    dp: { mode: "none" },
  });
  const b = await openBrowser();
  try {
    await signIn(b.page);
    await b.page.getByRole("heading", { name: "Federations", level: 1 }).waitFor();
    // The worker is alive: the answer arrives and no banner is drawn.
    const alive = await b.page.waitForResponse((r) => r.url().endsWith("/api/v1/workers"));
    assert.equal((await alive.json()).status, "ok");
    const banner = b.page.getByRole("alert", { name: "Worker status" });
    assert.equal(await banner.count(), 0);

    process.kill(pid, "SIGTERM"); // a clean shutdown: the worker records that it stopped
    await stopped(pid);
    await banner.waitFor({ timeout: 20_000 });
    const text = await banner.innerText();
    assert.match(text, /No aggregation worker has reported since \d{1,2}:\d{2}/);
    assert.match(text, /rounds will not open or aggregate/);
    assert.match(text, /fedlora worker --beat/);
    await screenshot(b.page, "federations-no-worker");

    await b.page.goto(`/federations/${fed.id}`);
    await b.page.getByRole("heading", { name: fed.name, level: 1 }).waitFor();
    await banner.waitFor();
    assert.match(await banner.innerText(), /No aggregation worker has reported since/);
    await screenshot(b.page, "federation-no-worker");
    assert.deepEqual(b.errors.map(String), []);
  } finally {
    await b.close();
  }
});
