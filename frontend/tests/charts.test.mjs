// The federation page with a finished history, served from fixtures (page.route), so the
// charts and the round timeline are checked with data whatever the worker can do today.
import { test } from "node:test";
import assert from "node:assert/strict";
import { canvasInk, chartRows, openBrowser, screenshot } from "./harness.mjs";

const F = "00000000-0000-4000-8000-00000000000f";
const now = Date.now();
const iso = (minutesAgo) => new Date(now - minutesAgo * 60_000).toISOString();
const clients = ["hospital-a", "clinic-b", "lab-c"].map((name, i) => ({
  id: `00000000-0000-4000-8000-00000000000${i}`,
  organization_id: "00000000-0000-4000-8000-0000000000aa",
  name,
  api_key_prefix: "flk_abcd",
  hardware: { accelerator: "NVIDIA A10", memory_gb: 24 },
  revoked: false,
  revoked_at: null,
  key_rotated_at: null,
  last_seen_at: iso(1),
  created_at: iso(100),
}));
const ranks = [16, 8, 4];
const spent = [2.0, 6.8, 8.0];
const federation = {
  id: F,
  name: "sentiment-fslora",
  description: "Three sites, heterogeneous ranks",
  base_model_id: "tiny-llama",
  task_type: "seq_cls",
  model: { fingerprint: "ab".repeat(32), modules: { "m.q": [32, 32] }, extra_trainable: {} },
  target_modules: ["q"],
  strategy: "fslora",
  strategy_params: {},
  global_rank: 16,
  num_rounds: 5,
  clients_per_round: 3,
  min_clients: 2,
  round_deadline_seconds: 600,
  training: { steps: 20, batch_size: 16, learning_rate: 5e-4, optimizer: "adamw", weight_decay: 0, max_seq_len: 128 },
  dp: { mode: "sample", clip_norm: 1, noise_multiplier: 1, target_epsilon: null, delta: 1e-5, epsilon_budget: 8 },
  status: "running",
  created_at: iso(60),
  updated_at: iso(1),
  started_at: iso(50),
  finished_at: null,
};
const rounds = [1, 2, 3].map((n) => ({
  id: `00000000-0000-4000-8000-0000000001${n}0`,
  federation_id: F,
  number: n,
  state: n < 3 ? "completed" : "open",
  min_updates: 2,
  opened_at: iso(50 - 10 * n),
  deadline_at: iso(40 - 10 * n),
  aggregating_at: n < 3 ? iso(46 - 10 * n) : null,
  completed_at: n < 3 ? iso(45 - 10 * n) : null,
  failed_at: null,
  failure_reason: null,
  job_duration_seconds: n < 3 ? 1.8 : null,
  job_device: n < 3 ? "cuda:0" : null,
  job_peak_memory_bytes: n < 3 ? 512 * 1024 ** 2 : null,
  kind: "training",
  // the federated evaluation of the adapter the round published (round 2's is the best)
  evaluation: n < 3 ? { loss: 0.9 - 0.2 * n, accuracy: 0.6 + 0.1 * n, perplexity: null, num_examples: 300, num_clients: 3 } : null,
  best: n === 2,
}));
const tasks = (r) =>
  clients.map((c, i) => ({
    id: `${r.id.slice(0, -2)}${i}1`,
    round_id: r.id,
    federation_id: F,
    client_id: c.id,
    // lab-c straggles in round 2.
    status: r.state === "open" ? (i === 0 ? "uploaded" : "leased") : r.number === 2 && i === 2 ? "dropped" : "reported",
    plan: { lora: { rank: ranks[i], lora_alpha: 16 } },
    lease_expires_at: null,
    lease_count: 1,
    leased_at: r.opened_at,
    uploaded_at: null,
    reported_at: null,
    report_metrics: {},
  }));
const updates = (r) =>
  tasks(r)
    .filter((t) => t.status === "reported" || t.status === "uploaded")
    .map((t, i) => ({
      id: `${t.id}u`,
      task_id: t.id,
      round_id: r.id,
      client_id: t.client_id,
      sha256: "cd".repeat(32),
      size: [4, 2, 1][i] * 1024 ** 2,
      shapes: {},
      lora: {},
      metrics: { train_loss: 1.2 / r.number + 0.1 * i },
      num_examples: 100,
      epsilon: 1,
      accepted_at: r.opened_at,
    }));
const adapters = rounds
  .filter((r) => r.state === "completed")
  .map((r) => ({
    id: `${r.id}a`,
    round_id: r.id,
    federation_id: F,
    round_number: r.number,
    adapter_sha256: "ef".repeat(32),
    adapter_config_sha256: "12".repeat(32),
    state_sha256: null,
    strategy: "fslora",
    update_ids: updates(r).map((u) => u.id),
    epsilon: 2.5 * r.number,
    metrics: {
      eval_accuracy: 0.6 + 0.1 * r.number,
      // round 2's worker calibrated the threshold from the members' scores of round 1's adapter
      ...(r.number === 2
        ? { calibration_offset: 0.4, calibration_shift: 0.4, calibration_balanced_accuracy_before: 0.55, calibration_balanced_accuracy_after: 0.71, calibration_examples: 300 }
        : {}),
    },
    created_at: r.completed_at,
  }));
const list = (data) => ({ data, count: data.length });

function respond(path) {
  const routes = {
    [`/api/v1/federations/${F}`]: federation,
    [`/api/v1/federations/${F}/rounds`]: list(rounds),
    [`/api/v1/federations/${F}/memberships`]: list(
      clients.map((c, i) => ({
        id: `${c.id}m`,
        federation_id: F,
        client_id: c.id,
        rank_budget: ranks[i],
        active: true,
        fingerprint: "ab".repeat(32),
        fingerprint_reported_at: iso(55),
        num_examples: 100,
        epsilon_spent: spent[i],
        created_at: iso(58),
      })),
    ),
    [`/api/v1/federations/${F}/adapters`]: list(adapters),
    "/api/v1/clients": list(clients),
  };
  for (const r of rounds) {
    routes[`/api/v1/rounds/${r.id}/tasks`] = list(tasks(r));
    routes[`/api/v1/rounds/${r.id}/updates`] = list(updates(r));
  }
  return routes[path];
}

test("the federation page draws its charts and timeline from the API's data", async () => {
  const b = await openBrowser();
  try {
    await b.page.route("**/api/v1/**", (route) => {
      const body = respond(new URL(route.request().url()).pathname);
      return body === undefined
        ? route.fulfill({ status: 404, json: { detail: "not in the fixture", code: "not_found" } })
        : route.fulfill({ json: body });
    });
    await b.page.goto("/");
    await b.page.evaluate(() => sessionStorage.setItem("fedlora.token", "fixture"));
    await b.page.goto(`/federations/${F}`);
    await b.page.getByRole("heading", { name: "sentiment-fslora", level: 1 }).waitFor();

    const loss = "Training loss and evaluation metric per round";
    await b.page.getByRole("img", { name: loss }).locator("canvas").first().waitFor();
    // round, train loss, federated eval loss, accuracy, perplexity, clients, best
    assert.deepEqual(await chartRows(b.page, loss), [
      ["1", "1.3", "0.7", "0.7", "—", "3", ""],
      ["2", "0.65", "0.5", "0.8", "—", "3", "best"],
      ["3", "0.4", "—", "—", "—", "—", ""],
    ]);
    assert.match(await b.page.locator("figcaption").first().innerText(), /best adapter so far is round 2's \(accuracy 0\.8\)/);
    const eps = "Epsilon spent per client against the budget";
    assert.deepEqual(
      (await chartRows(b.page, eps)).map((r) => r.slice(0, 2)),
      [
        ["hospital-a", "2"],
        ["clinic-b", "6.8"],
        ["lab-c", "8"],
      ],
    );
    assert.deepEqual(await chartRows(b.page, "Bytes uploaded per client"), [
      ["hospital-a", "12 MB"],
      ["clinic-b", "4.0 MB"],
      ["lab-c", "1.0 MB"],
    ]);
    for (const name of [loss, eps, "Distribution of member rank budgets", "Bytes uploaded per client"]) {
      assert.ok((await canvasInk(b.page.getByRole("img", { name }))) > 0.005, `${name}: drawn`);
    }

    const timeline = b.page.getByRole("list", { name: "Rounds" });
    assert.equal(await timeline.getByRole("listitem").count(), 3);
    const round2 = timeline.getByRole("listitem").filter({ has: b.page.getByText("Round 2", { exact: true }) });
    assert.match(await round2.innerText(), /stragglers: lab-c/);
    assert.match(await round2.innerText(), /device cuda:0/);
    assert.match(await round2.innerText(), /aggregation 1\.8 s/);
    assert.match(await round2.innerText(), /federated evaluation: accuracy 0\.8 · loss 0\.5 \(3 clients, 300 examples\)\s*best/i);
    assert.match(
      await round2.innerText(),
      /Threshold calibration: margin offset \+0\.400 \(members' held-out balanced accuracy of the previous adapter 0\.550 → 0\.710, 300 rows\)/,
    );
    const round1 = timeline.getByRole("listitem").filter({ has: b.page.getByText("Round 1", { exact: true }) });
    assert.doesNotMatch(await round1.innerText(), /Threshold calibration/);
    await screenshot(b.page, "federation-with-history");
    assert.deepEqual(b.errors.map(String), []);
  } finally {
    await b.close();
  }
});
