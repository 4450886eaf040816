"""Aggregation benchmark on Llama-2-7B shapes: every strategy's ``aggregate`` hook.

Full run: 32 layers x (q, k, v, o) of 4096 x 4096, 20 clients with ranks drawn (seeded) from
{4, 8, 16, 32, 64}, global rank 64 (SDFLoRA: shared rank 64). ``--quick``: 2 layers of
512 x 512, 8 clients, ranks from {4, 8, 16}, global rank 16.

Each method runs in a fresh subprocess (clean peak-memory figures). Reported per method:

* ``total_s``: ``aggregate()`` wall time (validation + arithmetic); ``kernel_s``: the arithmetic
  (``_aggregate``) alone; ``peak_mib``: peak RSS above the pre-call RSS (CUDA: peak allocated).
* SVD methods (flexlora, sdflora): the dense route (form ``W = Bc @ Ac``, ``torch.linalg.svd``)
  and the factored route timed **on the same ``--dense-layers`` layers in the same run**
  (``ratio_same_layers``), the dense time extrapolated to all layers
  (``dense_extrapolated_s``, clearly an extrapolation) against the method's measured total,
  and the max relative Frobenius difference of the method's published rank-G update against
  the dense truncation on those layers.
* Factor-averaging methods (fedavg, hetlora, prelort, fslora, flora): achieved GB/s =
  (bytes of all uploaded factors read + state read + new state written) / ``kernel_s``, next to
  the memory-copy bandwidth (``copy_`` of a large buffer, read + write, best of several)
  measured in the same process just before and after; the kernel time is the best of 3 runs
  (this host is shared, so single timings are noisy). In ``--quick`` mode the data sit in
  cache and the GB/s figures mean little: it is a smoke test.

Prints a table and writes JSON to ``bench/results/`` (git-ignored).
Usage: ``python bench/aggregation.py [--quick] [--methods flexlora,fslora] [--device auto]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch

from fedlora_client.protocol import STRATEGY_NAMES, ModelSpec, TaskType, lora_a_key, lora_b_key
from worker.linalg import dense_svd, factored_svd, resolve_device
from worker.strategies import get_strategy
from worker.strategies.base import ClientUpdate, Participant, PlanContext
from worker.strategies.common import data_weights
from worker.strategies.flexlora import stack_group
from worker.strategies.params import validate_params

CONFIGS: dict[str, dict[str, Any]] = {
    "full": {"layers": 32, "dim": 4096, "clients": 20, "ranks": [4, 8, 16, 32, 64], "rank": 64},
    "quick": {"layers": 2, "dim": 512, "clients": 8, "ranks": [4, 8, 16], "rank": 16},
    "warmup": {"layers": 1, "dim": 64, "clients": 3, "ranks": [2, 4], "rank": 4},
}
SVD_METHODS = ("flexlora", "sdflora")
READS_STATE = ("prelort", "fslora")
RESULTS = Path(__file__).parent / "results"


def make_ctx(cfg: dict[str, Any], method: str) -> PlanContext:
    dim, gen = cfg["dim"], torch.Generator().manual_seed(0)
    modules = {
        f"model.layers.{i}.self_attn.{p}_proj": (dim, dim)
        for i in range(cfg["layers"])
        for p in "qkvo"
    }
    ranks = torch.tensor(cfg["ranks"])[
        torch.randint(len(cfg["ranks"]), (cfg["clients"],), generator=gen)
    ]
    params = {"shared_rank": cfg["rank"]} if method == "sdflora" else {}
    return PlanContext(
        federation_id="bench",
        round_number=1,
        total_rounds=1,
        seed=0,
        task_type=TaskType.CAUSAL_LM,
        model=ModelSpec(fingerprint="0" * 64, modules=modules),
        global_rank=cfg["rank"],
        lora_alpha=2.0 * cfg["rank"],
        use_rslora=False,
        params=validate_params(method, params),
        participants=tuple(
            Participant(f"c{i}", int(r), num_examples=100 + 10 * i) for i, r in enumerate(ranks)
        ),
    )


def make_updates(
    strategy: Any, state: Any, ctx: PlanContext, device: torch.device
) -> list[ClientUpdate]:
    """Random final factors with a decaying spectrum, one batched tensor per client (views)."""
    gen = torch.Generator().manual_seed(1)
    modules = sorted(ctx.model.modules)
    dim = ctx.model.modules[modules[0]][0]
    updates = []
    for p in ctx.participants:
        lora = strategy.client_lora(state, ctx, p)
        r = lora.rank
        decay = torch.exp(-torch.arange(r) / 8.0)
        B = torch.randn(len(modules), dim, r, generator=gen).mul_(decay * 0.01).to(device)
        A = torch.randn(len(modules), r, dim, generator=gen).mul_(dim**-0.5).to(device)
        tensors = {}
        for i, m in enumerate(modules):
            tensors[lora_b_key(m)], tensors[lora_a_key(m)] = B[i], A[i]
        updates.append(ClientUpdate(p.client_id, lora, tensors, p.num_examples or 1))
    return updates


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    x = torch.empty(nbytes // 4, device=device).uniform_()
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        y.copy_(x)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * 4 / best / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak RSS above the starting RSS, sampled every 2 ms (CUDA: peak allocated)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.proc, self.peak = device, psutil.Process(), 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def dense_comparison(
    strategy: Any, ctx: PlanContext, updates: list[ClientUpdate], result: Any, layers: int
) -> dict[str, Any]:
    """Dense vs factored route on the first ``layers`` layers, and the published result's error."""
    dev, rank = strategy.device, ctx.global_rank
    modules = sorted(ctx.model.modules)[:layers]
    p = data_weights(updates)
    blocks = [(pi * u.lora.scaling, u.tensors) for pi, u in zip(p, updates, strict=True)]
    Bc, Ac = stack_group(modules, blocks, dev)
    _, fact_s = timed(lambda: factored_svd(Bc, Ac, rank).factors(rank, 1.0), dev)
    dense_s, max_rel, sv_rel = 0.0, 0.0, 0.0
    s_g = result.lora.scaling
    for i, m in enumerate(modules):
        svd, t = timed(lambda i=i: dense_svd(Bc[i], Ac[i], rank), dev)
        dense_s += t
        W = svd.U * svd.S[:rank] @ svd.Vh
        ours = s_g * result.adapter[lora_b_key(m)].to(dev) @ result.adapter[lora_a_key(m)].to(dev)
        max_rel = max(max_rel, float(torch.linalg.norm(ours - W) / torch.linalg.norm(W)))
        S_f = factored_svd(Bc[i : i + 1], Ac[i : i + 1], rank).S[0, :rank]
        sv_rel = max(sv_rel, float(((S_f - svd.S[:rank]).abs() / svd.S[0]).max()))
    n_all = len(ctx.model.modules)
    return {
        "dense_layers": len(modules),
        "dense_s_same_layers": dense_s,
        "factored_s_same_layers": fact_s,
        "ratio_same_layers": dense_s / fact_s,
        "dense_extrapolated_s": dense_s / len(modules) * n_all,
        "max_rel_diff_vs_dense": max_rel,
        "max_singular_value_rel_diff": sv_rel,
    }


def run_method(
    cfg: dict[str, Any], method: str, device_setting: str, dense_layers: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    device = resolve_device(device_setting)
    ctx = make_ctx(cfg, method)
    strategy = get_strategy(method, ctx.params, device=device_setting)
    state = strategy.init_state(ctx)
    updates = make_updates(strategy, state, ctx, device)
    update_bytes = sum(t.numel() * t.element_size() for u in updates for t in u.tensors.values())
    copy_gbps = copy_bandwidth(device, min(1 << 30, 2 * update_bytes))
    _, validate_s = timed(lambda: strategy.validate_updates(state, ctx, updates), device)
    with PeakMemory(device) as peak:
        result, kernel_s = timed(lambda: strategy._aggregate(state, ctx, updates), device)
    if method not in SVD_METHODS:  # cheap: best of 3, and copy bandwidth best of before/after
        for _ in range(2):
            kernel_s = min(
                kernel_s, timed(lambda: strategy._aggregate(state, ctx, updates), device)[1]
            )
        copy_gbps = max(copy_gbps, copy_bandwidth(device, min(1 << 30, 2 * update_bytes)))
    state_bytes = sum(t.numel() * 4 for t in result.state.tensors.values())
    read_state = sum(t.numel() * 4 for t in state.tensors.values()) if method in READS_STATE else 0
    row: dict[str, Any] = {
        "method": method,
        "device": str(device),
        "clients": len(updates),
        "ranks": [u.lora.rank for u in updates],
        "total_s": validate_s + kernel_s,
        "kernel_s": kernel_s,
        "validate_s": validate_s,
        "peak_mib": peak.mib,
        "update_mib": update_bytes / 2**20,
        "copy_gbps": copy_gbps,
        "metrics": result.metrics,
    }
    if method in SVD_METHODS:
        row |= dense_comparison(strategy, ctx, updates, result, dense_layers)
        row["speedup_vs_dense_extrapolated"] = row["dense_extrapolated_s"] / row["total_s"]
    else:
        row["achieved_gbps"] = (update_bytes + read_state + state_bytes) / kernel_s / 1e9
        row["fraction_of_copy"] = row["achieved_gbps"] / copy_gbps
    return row


def _child(args: tuple[dict[str, Any], str, str, int, int | None], queue: Any) -> None:
    cfg, method, device, dense_layers, threads = args
    if threads:
        torch.set_num_threads(threads)
    run_method(CONFIGS["warmup"], method, device, 1)  # first-call costs (imports, LAPACK init)
    queue.put(run_method(cfg, method, device, dense_layers))


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'method':9} {'total s':>8} {'kernel s':>8} {'peak MiB':>9}  comparison")
    for r in rows:
        if "ratio_same_layers" in r:
            cmp = (
                f"dense/factored {r['ratio_same_layers']:.0f}x on {r['dense_layers']} layer(s); "
                f"dense extrapolated to all layers {r['dense_extrapolated_s']:.0f} s "
                f"({r['speedup_vs_dense_extrapolated']:.0f}x); max rel diff "
                f"{r['max_rel_diff_vs_dense']:.1e}"
            )
        else:
            cmp = (
                f"{r['achieved_gbps']:.2f} GB/s vs copy {r['copy_gbps']:.2f} GB/s "
                f"({100 * r['fraction_of_copy']:.0f}%)"
            )
        print(
            f"{r['method']:9} {r['total_s']:8.3f} {r['kernel_s']:8.3f} {r['peak_mib']:9.1f}  {cmp}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    parser.add_argument("--methods", default=",".join(STRATEGY_NAMES))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dense-layers", type=int, default=None, help="layers for the dense route")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (torch's MKL and SciPy's OpenBLAS)"
    )
    args = parser.parse_args(argv)
    if args.threads:  # read by OpenBLAS when the spawned children load SciPy
        os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    mode = "quick" if args.quick else "full"
    cfg = CONFIGS[mode]
    dense_layers = args.dense_layers or (1 if mode == "full" else 4 * cfg["layers"])
    ctx = mp.get_context("spawn")
    rows = []
    for method in args.methods.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_child, args=((cfg, method, args.device, dense_layers, args.threads), queue)
        )
        proc.start()
        rows.append(queue.get())
        proc.join()
        print(f"  done {method}: {rows[-1]['total_s']:.2f} s", flush=True)
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"aggregation-{mode}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    env = {
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),  # set by worker/__init__.py
        "platform": platform.platform(),
        "load_avg": os.getloadavg(),
        "config": cfg,
    }
    out.write_text(json.dumps({"mode": mode, "env": env, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
