"""Global adapters as PEFT folders, streamed as a tar archive without buffering."""

from __future__ import annotations

import tarfile
import time
import zipfile
from collections.abc import Iterator
from typing import Protocol

from api.db import GlobalAdapter

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_BLOCK = tarfile.BLOCKSIZE


class ReadableStore(Protocol):
    def size(self, sha256: str) -> int: ...
    def iter_chunks(self, sha256: str, chunk_size: int = ...) -> Iterator[bytes]: ...


def peft_folder_members(adapter: GlobalAdapter) -> list[tuple[str, str]]:
    """(file name in the folder, artifact sha256) of a global adapter's PEFT folder."""
    return [
        (ADAPTER_CONFIG, adapter.adapter_config_sha256),
        (ADAPTER_WEIGHTS, adapter.adapter_sha256),
    ]


def stream_tar(
    *, store: ReadableStore, folder: str, members: list[tuple[str, str]]
) -> Iterator[bytes]:
    """Yield a ustar archive of ``members`` under ``folder/``, chunk by chunk.

    tarfile writes headers; the bodies are copied from the store in bounded chunks, so memory
    does not grow with the adapter's size. Sizes are read up front, so a missing artifact fails
    before the first byte is sent.
    """
    sizes = [(name, sha, store.size(sha)) for name, sha in members]

    def generate() -> Iterator[bytes]:
        now = int(time.time())
        for name, sha, size in sizes:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = size
            info.mtime = now
            info.mode = 0o644
            yield info.tobuf(format=tarfile.USTAR_FORMAT)
            yield from store.iter_chunks(sha)
            if size % _BLOCK:
                yield b"\0" * (_BLOCK - size % _BLOCK)
        yield b"\0" * (2 * _BLOCK)

    return generate()


class _Drain:
    """A write-only, unseekable sink whose bytes are collected and handed out as they come."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def stream_zip(
    *, store: ReadableStore, folder: str, members: list[tuple[str, str]]
) -> Iterator[bytes]:
    """Yield a zip (stored, zip64-ready) of ``members`` under ``folder/``, chunk by chunk.

    zipfile writes to an unseekable sink with data descriptors, so nothing is buffered beyond
    one chunk. Sizes are read up front, so a missing artifact fails before the first byte.
    """
    for _, sha in members:
        store.size(sha)

    def generate() -> Iterator[bytes]:
        sink = _Drain()
        with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:  # type: ignore[call-overload]
            for name, sha in members:
                info = zipfile.ZipInfo(f"{folder}/{name}", date_time=time.gmtime()[:6])
                with archive.open(info, mode="w", force_zip64=True) as out:
                    for chunk in store.iter_chunks(sha):
                        out.write(chunk)
                        yield sink.take()
                yield sink.take()
        yield sink.take()

    return generate()
