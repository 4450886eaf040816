"""Benchmark: does accepting a large adapter upload keep the API's memory flat?

The issue's target: a 512 MiB adapter is uploaded with resident memory growing by < 50 MB.
A generated safetensors adapter (PEFT-keyed LoRA factors, F32) is uploaded three ways:

* in-process, through the store's writer and the validator (``store_upload``);
* in-process, as a resumable session of 8 MiB appends, then ``accept_partial_upload``;
* over HTTP to the real fedlora app under uvicorn: admin API builds a federation, a round is
  opened as the worker does, the client leases the task and PATCHes its update.

Each in-process scenario runs in a fresh spawned process; the server runs in its own. Growth
is measured twice against the RSS just before the upload: the peak seen by a sampler thread
(every 2 ms), and the kernel's exact peak (``VmHWM``, reset through /proc/<pid>/clear_refs
first; ``ru_maxrss``, a lifetime upper bound, where that is unavailable). A "naive" scenario
that loads the file whole with ``safetensors.numpy`` shows that the meter does see growth.

Usage: ``python bench/upload_memory.py [--quick]`` (512 MiB, or 32 MiB). Prints a table and
writes ``bench/results/upload_memory.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import multiprocessing
import platform
import resource
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from api.storage import ArtifactStore
from api.uploads import accept_partial_upload, store_upload
from fedlora_client import protocol as wire

MiB = 1024 * 1024
TARGET_MB = 50.0
RECEIVE_CHUNK = 64 * 1024  # what an ASGI server hands a route per body message
PATCH_BYTES = 8 * MiB  # one resumable-upload request
RESULTS = Path(__file__).resolve().parent / "results" / "upload_memory.json"
ADMIN = {"email": "bench@example.com", "password": "bench-password-not-secret-0123"}
FINGERPRINT = "ab" * 32
Shapes = dict[str, tuple[int, ...]]


def adapter_shapes(total_bytes: int, d: int = 4096, r: int = 64) -> Shapes:
    """LoRA factors of a Llama-like model (d=4096, r=64: 2 MiB per module) adding up to size."""
    shapes: Shapes = {}
    for i in range(max(1, total_bytes // (2 * d * r * 4))):
        module = f"model.layers.{i // 4}.self_attn.{'qkvo'[i % 4]}_proj"
        shapes[wire.lora_a_key(module)] = (r, d)
        shapes[wire.lora_b_key(module)] = (d, r)
    return shapes


def write_adapter(path: Path, shapes: Shapes) -> int:
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


def body(path: Path, chunk: int, start: int = 0, length: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = length if length is not None else 1 << 62
        while left > 0 and (data := f.read(min(chunk, left))):
            left -= len(data)
            yield data


# --------------------------------------------------------------------------- in-process


def one_shot(src: Path, store: ArtifactStore, shapes: Shapes) -> None:
    store_upload(
        store, body(src, RECEIVE_CHUNK), expected_shapes=shapes, max_header_bytes=16 * MiB,
        max_bytes=4096 * MiB,
    )  # fmt: skip


def resumable(src: Path, store: ArtifactStore, shapes: Shapes) -> None:
    upload_id = store.create_partial()
    size = src.stat().st_size
    while (offset := store.partial_size(upload_id)) < size:
        with store.append_partial(upload_id, offset=offset, max_bytes=size) as appender:
            for chunk in body(src, RECEIVE_CHUNK, offset, PATCH_BYTES):
                appender.write(chunk)
    accept_partial_upload(store, upload_id, expected_shapes=shapes, max_header_bytes=16 * MiB)


def naive(src: Path, store: ArtifactStore, shapes: Shapes) -> None:
    from safetensors.numpy import load_file

    assert all(np.isfinite(t).all() for t in load_file(str(src)).values())


IN_PROCESS: dict[str, tuple[Callable[[Path, ArtifactStore, Shapes], None], bool]] = {
    "writer + validator (64 KiB receives)": (one_shot, True),
    "resumable session (8 MiB appends) + validate": (resumable, True),
    "naive: safetensors load_file (reference)": (naive, False),
}


class PeakSampler(threading.Thread):
    """Samples a process's RSS every 2 ms and keeps the peak; also resets the kernel's peak."""

    def __init__(self, proc: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.proc, self.done = proc, threading.Event()
        self.hwm_reset = reset_peak_rss(proc.pid)
        self.baseline = self.peak = int(proc.memory_info().rss)

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, int(self.proc.memory_info().rss))
            time.sleep(0.002)

    def stop(self) -> tuple[int, int | None]:
        """(sampled growth, the kernel's peak RSS since the reset, or None if not resettable)."""
        self.done.set()
        self.join()
        return self.peak - self.baseline, peak_rss(self.proc.pid) if self.hwm_reset else None


def row(
    name: str, baseline: int, growth: int, peak: int | None, size: int, secs: float
) -> dict[str, Any]:
    return {
        "scenario": name,
        "baseline_rss_mb": baseline / 1e6,
        "sampled_growth_mb": growth / 1e6,
        "maxrss_growth_mb": None if peak is None else (peak - baseline) / 1e6,
        "seconds": secs,
        "mb_per_s": size / 1e6 / secs,
    }


def measure_in_process(name: str, src: str, workdir: str) -> dict[str, Any]:
    """Run one in-process scenario in this (fresh) process."""
    fn, _ = IN_PROCESS[name]
    path = Path(src)
    shapes, store = adapter_shapes(path.stat().st_size), ArtifactStore(Path(workdir) / "inproc")
    gc.collect()
    sampler = PeakSampler(psutil.Process())
    sampler.start()
    start = time.perf_counter()
    fn(path, store, shapes)
    secs = time.perf_counter() - start
    growth, peak = sampler.stop()
    if peak is None:  # no /proc reset: the lifetime peak is still an upper bound
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return row(name, sampler.baseline, growth, peak, path.stat().st_size, secs)


# --------------------------------------------------------------------------- over HTTP


def bench_settings(workdir: str) -> Any:
    from api.config import Settings

    return Settings(
        data_dir=Path(workdir) / "app",
        secret_key="bench-only-secret-0123456789abcdef-0123456789",
        bootstrap_admin_email=ADMIN["email"],
        bootstrap_admin_password=ADMIN["password"],
    )


def serve(workdir: str, port: int) -> None:
    """The real app (routes, auth, SQLite, store) under uvicorn; jobs are only recorded."""
    import uvicorn

    from api.main import create_app
    from api.queue import RecordingEnqueuer

    app = create_app(bench_settings(workdir), enqueuer=RecordingEnqueuer())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def ok(reply: httpx.Response) -> Any:
    if reply.status_code >= 300:
        raise RuntimeError(f"{reply.request.method} {reply.request.url}: {reply.text[:300]}")
    return reply.json() if reply.content else None


def lease_task(client: httpx.Client, workdir: str, shapes: Shapes) -> tuple[str, dict[str, str]]:
    """Admin API: org, client, federation, membership, start; then open the round as the worker
    does (``api.services.rounds``) and lease the task as the client."""
    from api.db import Base, create_db_engine, make_session_factory
    from api.services import rounds

    token = ok(client.post("/api/v1/auth/login", json=ADMIN))["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    org = ok(client.post("/api/v1/organizations", json={"name": "bench"}, headers=admin))
    join = ok(
        client.post("/api/v1/join-tokens", json={"organization_id": org["id"]}, headers=admin)
    )
    me = ok(client.post(wire.Routes.ENROLL, json={"join_token": join["token"], "name": "bench"}))
    auth = {"Authorization": f"Bearer {me['api_key']}"}
    rank = next(iter(shapes.values()))[0]
    modules = {k.removeprefix(wire.PEFT_PREFIX).removesuffix(".lora_A.weight"): (v[1], v[1])
               for k, v in shapes.items() if k.endswith("lora_A.weight")}  # fmt: skip
    spec = wire.ModelSpec(fingerprint=FINGERPRINT, modules=modules)
    federation = {
        "name": "bench", "base_model_id": "bench/llama", "task_type": "causal_lm",
        "model": spec.model_dump(mode="json"), "target_modules": [f"{p}_proj" for p in "qkvo"],
        "strategy": "fedavg", "strategy_params": {}, "global_rank": rank, "num_rounds": 1,
        "clients_per_round": 1, "min_clients": 1, "round_deadline_seconds": 3600,
        "dp": {"mode": "none"},
    }  # fmt: skip
    fed = ok(client.post("/api/v1/federations", headers=admin, json=federation))
    member = {"client_id": me["client_id"], "rank_budget": rank}
    ok(client.post(f"/api/v1/federations/{fed['id']}/memberships", json=member, headers=admin))
    fp = {"fingerprint": FINGERPRINT}
    ok(client.put(wire.Routes.MEMBERSHIP.format(federation_id=fed["id"]), json=fp, headers=auth))
    ok(client.post(f"/api/v1/federations/{fed['id']}/start", headers=admin))

    settings = bench_settings(workdir)
    lora = wire.LoraSpec(rank=rank, lora_alpha=2 * rank)
    start = ArtifactStore(settings.resolved_artifact_dir).put_bytes(b"start adapter placeholder")
    plan = wire.TrainingPlan(
        strategy="fedavg", task_type=wire.TaskType.CAUSAL_LM, base_model_id="bench/llama",
        model=spec, lora=lora, training=wire.LocalTraining(), seed=0,
        start=wire.ArtifactRef(sha256=start.sha256, size=start.size, lora=lora),
        dp=wire.DPPlan(mode=wire.DPMode.NONE, planned_rounds=1),
    )  # fmt: skip
    assert plan.upload_shapes() == shapes
    engine = create_db_engine(settings.resolved_database_url)
    Base.metadata.create_all(engine)
    with make_session_factory(engine)() as session:
        todo = rounds.round_to_open(session=session, federation_id=uuid.UUID(fed["id"]))
        assert todo is not None, "the federation did not become ready to open a round"
        plans = {m.client_id: plan for m in todo.selected}
        rounds.open_round(
            session=session, federation_id=uuid.UUID(fed["id"]), number=todo.number, plans=plans
        )
    engine.dispose()
    task = ok(client.get(wire.Routes.NEXT_TASK, params={"wait": 5}, headers=auth))
    return str(task["task_id"]), auth


def reset_peak_rss(pid: int) -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of a process's RSS (Linux ``VmHWM``), in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kib = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(kib[0]) * 1024 if kib else None


def measure_server(src: Path, workdir: str) -> dict[str, Any]:
    """Start the app in its own process, prepare a leased task (untimed), then PATCH the update
    in 8 MiB requests until the route accepts it, sampling the server's RSS throughout."""
    from api.db import Base, create_db_engine

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    size = src.stat().st_size
    settings = bench_settings(workdir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # schema from the models (Alembic's job)
    Base.metadata.create_all(create_db_engine(settings.resolved_database_url))
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(workdir, port))
    server.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
            for _ in range(400):
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        break
                time.sleep(0.05)
            task_id, auth = lease_task(client, workdir, adapter_shapes(size))
            with src.open("rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            manifest = wire.UploadManifest(
                task_id=task_id, base_model_fingerprint=FINGERPRINT, size=size, num_examples=100,
                lora=wire.LoraSpec(rank=64, lora_alpha=128), sha256=digest,
            ).model_dump(mode="json")  # fmt: skip
            headers = {**auth, wire.IDEMPOTENCY_HEADER: str(uuid.uuid4())}
            gc.collect()
            sampler = PeakSampler(psutil.Process(server.pid))
            sampler.start()
            begin = time.perf_counter()
            url = wire.Routes.UPLOADS.format(task_id=task_id)
            state = ok(client.post(url, json=manifest, headers=headers))
            while state["status"] != "accepted":
                offset = int(state["offset"])
                reply = client.patch(
                    wire.Routes.UPLOAD.format(upload_id=state["upload_id"]),
                    content=body(src, RECEIVE_CHUNK, offset, PATCH_BYTES),
                    headers={**auth, wire.UPLOAD_OFFSET_HEADER: str(offset)},
                )
                state = ok(reply)
            secs = time.perf_counter() - begin
            growth, peak = sampler.stop()
            name = "real fedlora app under uvicorn + httpx"
            return row(name, sampler.baseline, growth, peak, size, secs)
    finally:
        server.terminate()
        server.join()


# --------------------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB instead of 512 MiB")
    parser.add_argument("--size-mib", type=int, default=None, help="adapter size in MiB")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size_mib = args.size_mib or (32 if args.quick else 512)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedlora-bench-") as tmp:
        src = Path(tmp) / "adapter_model.safetensors"
        size = write_adapter(src, adapter_shapes(size_mib * MiB))
        for name, (_, targeted) in IN_PROCESS.items():
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                measured = pool.apply(measure_in_process, (name, str(src), tmp))
                rows.append({**measured, "targeted": targeted})
        try:
            rows.append({**measure_server(src, tmp), "targeted": True})
        except Exception as exc:  # the app is built in parallel: report, do not hide
            traceback.print_exc()
            rows.append({"scenario": f"real app: {exc}"[:200], "skipped": True})

    print(f"\nupload of a {size / MiB:.0f} MiB safetensors adapter (target: < {TARGET_MB:.0f} MB)")
    print(f"{'scenario':48} {'sampled MB':>10} {'peak MB':>8} {'MB/s':>6}  result")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['scenario'][:48]:48} {'':>10} {'':>8} {'':>6}  SKIPPED (see above)")
            continue
        growth = max(r["sampled_growth_mb"], r["maxrss_growth_mb"] or 0.0)
        r["ok"] = growth < TARGET_MB if r["targeted"] else None
        result = {True: "PASS", False: "FAIL", None: "(reference)"}[r["ok"]]
        hwm = "n/a" if r["maxrss_growth_mb"] is None else f"{r['maxrss_growth_mb']:.1f}"
        print(
            f"{r['scenario']:48} {r['sampled_growth_mb']:10.1f} {hwm:>8} {r['mb_per_s']:6.0f}"
            f"  {result}"
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
    return 0 if all(r.get("ok") is not False and not r.get("skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
