// A federation whose rounds fail, on the real API and worker (scripts/frontend-test): its one
// member never takes its task, so each round fails at its 10 s deadline and the worker opens
// another. The page counts completed rounds against num_rounds and failed ones on their own
// (never "3 / 1"), and, with DP off, says "DP off" instead of an epsilon budget and chart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { HAS_API, MODEL_SPEC, adminApi, enroll, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

const API = process.env.FEDLORA_API_DIRECT_URL;
const ready = HAS_API && API && process.env.FEDLORA_WORKER === "1";
const opts = { skip: ready ? false : "needs the API and a worker (run scripts/frontend-test)", timeout: 180_000 };

/** PUT as a client (its API key), on a fresh connection. */
function clientPut(path, key, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = request(
      `${API}/api/v1${path}`,
      { method: "PUT", agent: false, headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" } },
      (res) => {
        res.resume();
        res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`PUT ${path}: ${res.statusCode}`))));
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

test("failed rounds are counted apart from completed ones; DP off says so", opts, async () => {
  const api = await adminApi();
  const org = await api.post("/organizations", { name: unique("Idle") });
  const { token } = await api.post("/join-tokens", { organization_id: org.id });
  const idle = await enroll(token, unique("idle-site"));
  const fed = await api.post("/federations", {
    name: unique("Failing"),
    base_model_id: "tiny-llama",
    task_type: "causal_lm",
    model: MODEL_SPEC,
    target_modules: ["q_proj", "v_proj"],
    strategy: "fedavg",
    global_rank: 4,
    num_rounds: 1,
    clients_per_round: 1,
    min_clients: 1,
    round_deadline_seconds: 10,
    dp: { mode: "none" },
  });
  await api.post(`/federations/${fed.id}/memberships`, { client_id: idle.client_id, rank_budget: 4 });
  await clientPut(`/client/memberships/${fed.id}`, idle.api_key, { fingerprint: MODEL_SPEC.fingerprint });
  await api.post(`/federations/${fed.id}/start`);
  const b = await openBrowser();
  try {
    // Two rounds fail at their deadline (the member never leases its task); a third is open.
    for (let i = 0; ; i++) {
      const rounds = (await api.get(`/federations/${fed.id}/rounds`)).data;
      if (rounds.filter((r) => r.state === "failed").length >= 2) break;
      assert.ok(i < 120, `two rounds should have failed by now: ${JSON.stringify(rounds.map((r) => r.state))}`);
      await new Promise((r) => setTimeout(r, 1_000));
    }
    await signIn(b.page);
    await b.page.getByRole("heading", { name: "Federations", level: 1 }).waitFor();
    await b.page.goto(`/federations/${fed.id}`);
    await b.page.getByRole("heading", { name: fed.name, level: 1 }).waitFor();
    const stat = (name) => b.page.locator(".stat").filter({ has: b.page.getByText(name, { exact: true }) }).locator("dd");
    assert.equal(await stat("Completed rounds").innerText(), "0 / 1");
    assert.match(await stat("Failed rounds").innerText(), /^[23] \(retried\)$/);
    assert.equal(await stat("Epsilon budget").innerText(), "DP off");
    const privacy = b.page.getByRole("region", { name: "Privacy budget" });
    await privacy.getByText("DP off", { exact: true }).waitFor();
    assert.equal(await privacy.getByRole("img").count(), 0, "no epsilon chart without DP");
    await b.page.getByRole("table", { name: "Members" }).getByRole("cell", { name: "DP off" }).waitFor();
    const timeline = b.page.getByRole("list", { name: "Rounds" });
    assert.ok((await timeline.getByText("failed", { exact: true }).count()) >= 2);
    await screenshot(b.page, "federation-failed-rounds-dp-off");
    assert.deepEqual(b.errors.map(String), []);
  } finally {
    await api.post(`/federations/${fed.id}/cancel`);
    await b.close();
  }
});
