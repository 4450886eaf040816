"""Global adapters as PEFT folders, streamed as a tar archive without buffering."""

from __future__ import annotations

import tarfile
import time
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
