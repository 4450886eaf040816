"""Run the platform's server processes locally: the API (uvicorn) and a Celery worker.

Used by ``fedlora demo`` and the end-to-end tests. Each part is a real child process started
with this interpreter (``python -m fedlora ...``), configured only through ``FEDLORA_*``
environment variables, with its output in a log file, and stopped (terminate, then kill) on
exit, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import httpx


class PlatformError(RuntimeError):
    """A local platform process failed to start or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sdk_argv(*args: str) -> list[str]:
    """The command line of ``fedlora-client ARGS`` with this interpreter (no PATH lookup)."""
    return [sys.executable, "-c", "from fedlora_client.cli import main; main()", *args]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A child process with its log file; stopping it is idempotent."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we can stop its children too
        )

    def check_alive(self, *, finished_ok: bool = False) -> None:
        """Raise :class:`PlatformError` if the process died (or exited 0, unless
        ``finished_ok``: a client that did all its rounds exits cleanly)."""
        code = self.proc.poll()
        if code is not None and not (finished_ok and code == 0):
            raise PlatformError(
                f"{self.name} exited with code {self.proc.returncode}; "
                f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._log.close()

    def kill(self) -> None:
        """Kill the whole process group at once (a crash, for tests)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


class LocalPlatform:
    """API + worker processes sharing one set of ``FEDLORA_*`` settings."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log_dir: Path,
        port: int | None = None,
        worker: bool = True,
        beat: bool = True,
    ) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._want_worker = worker
        self._beat = beat
        self.api: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None

    def start(self, timeout: float = 90.0) -> LocalPlatform:
        py = sys.executable
        self.api = ManagedProcess(
            "api",
            [py, "-m", "fedlora", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            self.env,
            self.log_dir,
        )
        if self._want_worker:
            self.start_worker()
        self.wait_ready(timeout)
        return self

    def start_worker(self, name: str = "worker") -> ManagedProcess:
        args = [sys.executable, "-m", "fedlora", "worker", "--concurrency", "1"]
        if self._beat:
            args.append("--beat")
        self.worker = ManagedProcess(name, args, self.env, self.log_dir)
        return self.worker

    def wait_ready(self, timeout: float) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            self.api.check_alive()
            if self.worker is not None:
                self.worker.check_alive()
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.3)
        raise PlatformError(f"API at {self.url} not ready after {timeout:.0f}s ({last})")

    def stop(self) -> None:
        for proc in (self.worker, self.api):
            if proc is not None:
                proc.stop()

    def __enter__(self) -> LocalPlatform:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
