// The New-federation form against the real API: its own defaults submit as they stand, the
// whole `fedlora-client inspect` output pasted into "Modules" fills the model's fields, the
// two ways to set the DP noise exclude each other, and a seq_cls model without its
// classification head is refused with the command that fixes it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HAS_API, MODEL_SPEC, adminApi, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

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
