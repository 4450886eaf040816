"""Benchmark: does accepting a large adapter upload keep the API's memory flat?

The issue's target: a 512 MiB adapter is uploaded with resident memory growing by < 50 MB.
This streams a generated safetensors adapter (PEFT-keyed LoRA factors, F32) through the
artifact store's writer and the upload validator, the way an upload route does, and measures
the resident set size (RSS) of the process doing it.

Each scenario runs in a fresh spawned process so one cannot inherit another's heap. Growth is
reported two ways: the peak of an RSS sampler thread (every 2 ms) minus the RSS just before the
upload, and ``ru_maxrss`` (the kernel's exact lifetime peak, so never a missed spike) minus the
same baseline. The second is an upper bound on the first. A "naive" scenario that loads the
whole file with ``safetensors.numpy`` is included to show that the meter does see growth.

Usage::

    python bench/upload_memory.py            # 512 MiB
    python bench/upload_memory.py --quick    # 32 MiB

Prints a table and writes ``bench/results/upload_memory.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from api.storage import ArtifactStore
from api.uploads import accept_partial_upload, store_upload
from fedlora_client.protocol import lora_a_key, lora_b_key

MiB = 1024 * 1024
TARGET_MB = 50.0
RECEIVE_CHUNK = 64 * 1024  # what an ASGI server hands a route per body message
PATCH_BYTES = 8 * MiB  # one resumable-upload request
RESULTS = Path(__file__).resolve().parent / "results" / "upload_memory.json"


def adapter_shapes(total_bytes: int, d: int = 4096, r: int = 64) -> dict[str, tuple[int, ...]]:
    """LoRA factors of a Llama-like model (d=4096, r=64: 2 MiB per module) adding up to size."""
    modules = max(1, total_bytes // (2 * d * r * 4))
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(modules):
        module = f"model.layers.{i // 4}.self_attn.{'qkvo'[i % 4]}_proj"
        shapes[lora_a_key(module)] = (r, d)
        shapes[lora_b_key(module)] = (d, r)
    return shapes


def write_adapter(path: Path, shapes: dict[str, tuple[int, ...]]) -> int:
    """Write a safetensors file tensor by tensor, so generating it needs no large buffer."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8-byte alignment
    rng = np.random.default_rng(0)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.01).tobytes())
    return 8 + len(raw) + offset


def body(path: Path, chunk: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        while data := f.read(chunk):
            yield data


def one_shot(src: Path, store: ArtifactStore, shapes: dict[str, tuple[int, ...]]) -> None:
    store_upload(
        store,
        body(src, RECEIVE_CHUNK),
        expected_shapes=shapes,
        max_header_bytes=16 * MiB,
        max_bytes=4 * 1024 * MiB,
    )


def resumable(src: Path, store: ArtifactStore, shapes: dict[str, tuple[int, ...]]) -> None:
    upload_id = store.create_partial()
    size = src.stat().st_size
    chunks = body(src, RECEIVE_CHUNK)
    while (offset := store.partial_size(upload_id)) < size:
        with store.append_partial(upload_id, offset=offset, max_bytes=size) as appender:
            while appender.offset - offset < PATCH_BYTES and (chunk := next(chunks, b"")):
                appender.write(chunk)
    accept_partial_upload(store, upload_id, expected_shapes=shapes, max_header_bytes=16 * MiB)


def naive(src: Path, store: ArtifactStore, shapes: dict[str, tuple[int, ...]]) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(src))
    assert all(np.isfinite(t).all() for t in tensors.values())


SCENARIOS: dict[
    str, tuple[Callable[[Path, ArtifactStore, dict[str, tuple[int, ...]]], None], bool]
] = {
    "writer + validator (64 KiB receives)": (one_shot, True),
    "resumable session (8 MiB PATCHes) + validate": (resumable, True),
    "naive: safetensors load_file (reference)": (naive, False),
}


def harness_app(root: str, size: int) -> Any:
    """A minimal ASGI app with the upload route's data path (create, PATCH chunks, finalize).

    Stands in for the real route where that does not exist yet: it measures what the server,
    the ASGI body stream and the store do, without auth or the database.
    """
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    store = ArtifactStore(root)
    shapes = adapter_shapes(size)

    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"upload_id": store.create_partial()})

    async def patch(request: Request) -> JSONResponse:
        offset = int(request.headers["upload-offset"])
        uid = request.path_params["uid"]
        with store.append_partial(uid, offset=offset, max_bytes=size) as appender:
            async for chunk in request.stream():
                appender.write(chunk)
        return JSONResponse({"offset": appender.offset})

    async def finalize(request: Request) -> JSONResponse:
        ref, _ = await run_in_threadpool(
            accept_partial_upload,
            store,
            request.path_params["uid"],
            expected_shapes=shapes,
            max_header_bytes=16 * MiB,
        )
        return JSONResponse({"sha256": ref.sha256, "size": ref.size})

    return Starlette(
        routes=[
            Route("/uploads", create, methods=["POST"]),
            Route("/uploads/{uid}", patch, methods=["PATCH"]),
            Route("/uploads/{uid}/finalize", finalize, methods=["POST"]),
        ]
    )


def serve_harness(root: str, size: int, port: int) -> None:
    import uvicorn

    uvicorn.run(harness_app(root, size), host="127.0.0.1", port=port, log_level="warning")


def upload_over_http(src: Path, base: str) -> None:
    import httpx

    size = src.stat().st_size
    with httpx.Client(base_url=base, timeout=120) as client, src.open("rb") as f:
        uid = client.post("/uploads").raise_for_status().json()["upload_id"]
        offset = 0
        while offset < size:

            def patch_body(start: int = offset) -> Iterator[bytes]:
                f.seek(start)
                left = min(PATCH_BYTES, size - start)
                while left and (chunk := f.read(min(RECEIVE_CHUNK, left))):
                    left -= len(chunk)
                    yield chunk

            headers = {"Upload-Offset": str(offset)}
            reply = client.patch(f"/uploads/{uid}", content=patch_body(), headers=headers)
            offset = reply.raise_for_status().json()["offset"]
        client.post(f"/uploads/{uid}/finalize").raise_for_status()


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of a process's RSS (Linux ``VmHWM``), in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(kib[0]) * 1024 if kib else None


def measure_server(src: Path, workdir: str) -> dict[str, Any]:
    """Run the harness under uvicorn in its own process and sample *that* process's RSS."""
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    size = src.stat().st_size
    ctx = multiprocessing.get_context("spawn")
    server = ctx.Process(target=serve_harness, args=(str(Path(workdir) / "asgi"), size, port))
    server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.post(f"{base}/uploads", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        proc = psutil.Process(server.pid)
        baseline = proc.memory_info().rss
        peak, done = baseline, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        upload_over_http(src, base)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        hwm = peak_rss(proc.pid)
    finally:
        server.terminate()
        server.join()
    return {
        "scenario": "ASGI harness under uvicorn + httpx (8 MiB PATCHes)",
        "baseline_rss_mb": baseline / 1e6,
        "sampled_growth_mb": (peak - baseline) / 1e6,
        "maxrss_growth_mb": None if hwm is None else (hwm - baseline) / 1e6,
        "seconds": seconds,
        "mb_per_s": size / 1e6 / seconds,
    }


def measure(name: str, src: str, workdir: str) -> dict[str, Any]:
    """Run one scenario in this (fresh) process and report its memory growth."""
    fn, _ = SCENARIOS[name]
    shapes = adapter_shapes(Path(src).stat().st_size)
    store = ArtifactStore(Path(workdir) / name.split()[0])
    proc = psutil.Process()
    gc.collect()
    baseline = proc.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    fn(Path(src), store, shapes)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "scenario": name,
        "baseline_rss_mb": baseline / 1e6,
        "sampled_growth_mb": (peak - baseline) / 1e6,
        "maxrss_growth_mb": (maxrss - baseline) / 1e6,
        "seconds": seconds,
        "mb_per_s": Path(src).stat().st_size / 1e6 / seconds,
    }


def verdict(row: dict[str, Any], targeted: bool) -> dict[str, Any]:
    growth = max(row["sampled_growth_mb"], row["maxrss_growth_mb"] or 0.0)
    row["target_mb"] = TARGET_MB if targeted else None
    row["ok"] = growth < TARGET_MB if targeted else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB instead of 512 MiB")
    parser.add_argument("--size-mib", type=int, default=None, help="adapter size in MiB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size_mib = args.size_mib or (32 if args.quick else 512)

    ctx = multiprocessing.get_context("spawn")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedlora-bench-") as tmp:
        src = Path(tmp) / "adapter_model.safetensors"
        size = write_adapter(src, adapter_shapes(size_mib * MiB))
        for name, (_, targeted) in SCENARIOS.items():
            with ctx.Pool(1) as pool:
                row = pool.apply(measure, (name, str(src), tmp))
            rows.append(verdict(row, targeted))
        rows.insert(2, verdict(measure_server(src, tmp), True))

    print(f"\nupload of a {size / MiB:.0f} MiB safetensors adapter (target: < {TARGET_MB:.0f} MB)")
    print(f"{'scenario':52} {'sampled MB':>10} {'maxrss MB':>10} {'MB/s':>7}  result")
    for row in rows:
        result = {True: "PASS", False: "FAIL", None: "(reference)"}[row["ok"]]
        maxrss = "n/a" if row["maxrss_growth_mb"] is None else f"{row['maxrss_growth_mb']:.1f}"
        print(
            f"{row['scenario']:52} {row['sampled_growth_mb']:10.1f} "
            f"{maxrss:>10} {row['mb_per_s']:7.0f}  {result}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "upload_memory",
        "when": datetime.now(UTC).isoformat(),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": psutil.cpu_count(),
        "adapter_bytes": size,
        "target_growth_mb": TARGET_MB,
        "results": rows,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return 0 if all(row["ok"] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
