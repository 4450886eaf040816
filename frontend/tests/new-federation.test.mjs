// The New-federation form against the real API: its own defaults submit as they stand, the
// whole `fedlora-client inspect` output pasted into "Modules" fills the model's fields, the
// two ways to set the DP noise exclude each other, a seq_cls model without its classification
// head is refused with the command that fixes it, and the privacy preview shows what the DP
// settings do (epsilon, noise-to-signal) with its warnings before anything is created.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAS_API, MODEL_SPEC, adminApi, chartRows, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

const opts = { skip: HAS_API ? false : "needs the API (run scripts/frontend-test)" };

/** What `fedlora-client inspect <dir> --task seq_cls` prints (a tiny model with its head). */
const INSPECT = {
  fingerprint: "cd".repeat(32),
  modules: { "bert.encoder.layer.0.attention.self.query": [32, 32] },
  extra_trainable: { "base_model.model.classifier.weight": [2, 32], "base_model.model.classifier.bias": [2] },
};

async function withForm(fn) {
  const b = await openBrowser();
  try {
    await signIn(b.page);
    await b.page.getByRole("link", { name: "New federation" }).click();
    await b.page.getByRole("heading", { name: "New federation" }).waitFor();
    await fn(b.page);
    assert.deepEqual(b.errors.map(String), [], "no uncaught errors in the page");
  } finally {
    await b.close();
  }
}

async function basics(page, name, taskType) {
  const group = page.getByRole("group", { name: "Federation" });
  await group.getByLabel("Name", { exact: true }).fill(name);
  await group.getByLabel("Base model ID").fill("tiny/bert");
  await group.getByLabel("Task type").selectOption(taskType);
  await group.getByLabel("Target modules").fill("query");
  await group.getByLabel("Global rank").fill("4");
  await group.getByLabel("Number of rounds").fill("2");
  await group.getByLabel("Clients per round").fill("2");
  await group.getByLabel("Min clients").fill("2");
  await group.getByLabel("Round deadline seconds").fill("600");
}

async function created(page, name) {
  await page.getByRole("heading", { name, level: 1 }).waitFor();
  const api = await adminApi();
  return api.get(`/federations/${page.url().split("/").pop()}`);
}

test("the form's own DP defaults submit as they are", opts, () =>
  withForm(async (page) => {
    const dp = page.getByRole("group", { name: "Differential privacy" });
    assert.equal(await dp.getByLabel("Mode").inputValue(), "sample");
    assert.equal(await dp.getByLabel("Target epsilon").inputValue(), "8");
    assert.equal(await dp.getByLabel("Noise multiplier").inputValue(), "");
    const name = unique("Defaults");
    await basics(page, name, "causal_lm");
    await page.getByLabel("Fingerprint").fill(MODEL_SPEC.fingerprint);
    await page.getByLabel("Modules", { exact: true }).fill(JSON.stringify(MODEL_SPEC.modules));
    await page.getByRole("button", { name: "Create federation" }).click();
    const fed = await created(page, name);
    assert.equal(fed.dp.mode, "sample");
    assert.equal(fed.dp.target_epsilon, 8);
    assert.equal(fed.dp.noise_multiplier, null);
  }));

test("filling the noise multiplier empties the target epsilon, and back", opts, () =>
  withForm(async (page) => {
    const dp = page.getByRole("group", { name: "Differential privacy" });
    await dp.getByLabel("Noise multiplier").fill("1.1");
    assert.equal(await dp.getByLabel("Target epsilon").inputValue(), "");
    await dp.getByLabel("Target epsilon").fill("4");
    assert.equal(await dp.getByLabel("Noise multiplier").inputValue(), "");
    await dp.getByLabel("Noise multiplier").fill("0.9");
    const name = unique("Sigma");
    await basics(page, name, "causal_lm");
    await page.getByLabel("Fingerprint").fill(MODEL_SPEC.fingerprint);
    await page.getByLabel("Modules", { exact: true }).fill(JSON.stringify(MODEL_SPEC.modules));
    await page.getByRole("button", { name: "Create federation" }).click();
    const fed = await created(page, name);
    assert.equal(fed.dp.noise_multiplier, 0.9);
    assert.equal(fed.dp.target_epsilon, null);
  }));

test("pasting inspect's whole output into Modules fills the model's fields", opts, () =>
  withForm(async (page) => {
    const name = unique("Pasted");
    await basics(page, name, "seq_cls");
    await page.getByLabel("Modules", { exact: true }).fill(JSON.stringify(INSPECT, null, 2));
    assert.equal(await page.getByLabel("Fingerprint").inputValue(), INSPECT.fingerprint);
    assert.deepEqual(JSON.parse(await page.getByLabel("Modules", { exact: true }).inputValue()), INSPECT.modules);
    assert.deepEqual(JSON.parse(await page.getByLabel("Extra trainable").inputValue()), INSPECT.extra_trainable);
    await screenshot(page, "federation-new-pasted-inspect");
    await page.getByRole("button", { name: "Create federation" }).click();
    const fed = await created(page, name);
    assert.deepEqual(fed.model, INSPECT);
  }));

test("a seq_cls model without its classification head is refused with the fix", opts, () =>
  withForm(async (page) => {
    await basics(page, unique("Headless"), "seq_cls");
    await page.getByLabel("Modules", { exact: true }).fill(JSON.stringify({ ...INSPECT, extra_trainable: {} }));
    await page.getByRole("button", { name: "Create federation" }).click();
    const model = page.getByRole("group", { name: "Base model" });
    const alert = model.getByRole("alert").filter({ hasText: "needs the classification head" });
    await alert.waitFor();
    assert.match(await alert.innerText(), /fedlora-client inspect <model dir> --task seq_cls/);
    await screenshot(page, "federation-new-headless-seq-cls");
  }));

test("the privacy preview shows epsilon per organization size and warns about client-level DP with few clients", opts, () =>
  withForm(async (page) => {
    const panel = page.getByRole("group", { name: "Privacy preview" });
    await panel.getByText("Fill in the global rank").waitFor(); // nothing to preview yet
    await basics(page, unique("Preview"), "causal_lm"); // rank 4, 2 rounds, 2 clients per round
    await page.getByLabel("Modules", { exact: true }).fill(JSON.stringify(MODEL_SPEC.modules));
    const table = panel.getByRole("table", { name: "Privacy preview" });
    const rows = table.locator("tbody tr");

    // the form's defaults: sample-level DP calibrated to epsilon 8, for the default sizes
    await rows.filter({ hasText: "50,000 examples" }).waitFor();
    for (const [size, , , sigma, epsilon] of await chartRows(page, "Privacy preview")) {
      assert.ok(Math.abs(Number(epsilon) - 8) < 0.05, `${size}: epsilon ${epsilon}`);
      assert.ok(Number(sigma) > 0, `${size}: sigma ${sigma}`);
    }
    await panel.getByLabel("Organization sizes").fill("800, 20000");
    await rows.filter({ hasText: "20,000 examples" }).waitFor();
    assert.deepEqual((await chartRows(page, "Privacy preview")).map((r) => r[0]), ["800 examples", "20,000 examples"]);

    // client-level DP with 2 organizations per round: warned, and the noise swamps the update
    const dp = page.getByRole("group", { name: "Differential privacy" });
    await dp.getByLabel("Mode", { exact: true }).selectOption("client");
    await dp.getByLabel("Noise multiplier").fill("1");
    const warnings = panel.getByRole("list", { name: "Privacy warnings" });
    const few = warnings.getByText("client-level DP adds noise the size of one whole update to an average over 2 organizations");
    await few.waitFor();
    // A and B at rank 4 of two 32 x 32 modules: d = 512; 2 clients' noises average to sqrt(512 / 2)
    const [, , , sigma, epsilon, ratio] = (await chartRows(page, "Privacy preview"))[0];
    assert.equal(sigma, "1");
    assert.ok(Number(epsilon) > 0, `epsilon ${epsilon}`);
    assert.equal(ratio, "16");
    await warnings.getByText("the noise outweighs the signal").waitFor();
    await screenshot(page, "federation-new-privacy-preview");

    // with many organizations per round the crowd warning goes (the noise still dominates)
    await page.getByRole("group", { name: "Federation" }).getByLabel("Clients per round").fill("100");
    await few.waitFor({ state: "detached" });
    await warnings.getByText("the noise outweighs the signal").waitFor();
    // nothing was created by previewing
    const api = await adminApi();
    const all = await api.get("/federations?limit=500");
    assert.ok(!all.data.some((f) => f.name.startsWith("Preview-")));
  }));
