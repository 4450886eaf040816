"""Validation of client updates: a safetensors file that matches the task's plan, or a rejection.

Why by hand and not with ``safetensors``: the library's loaders map or read whole tensors and
accept any dtype, name and size the header claims; an upload from another organization must be
checked against a budget *before* anything is trusted (header length, JSON size, offsets) and
its values must be checked in bounded chunks so memory does not grow with the adapter. The
format itself is tiny (8-byte little-endian header length, JSON header, raw little-endian data),
so checking it here costs ~150 lines and needs only numpy and the standard library.

Never unpickled, never imported as torch: pickle (``torch.save``), zip and every other format is
rejected with a message saying what the file looks like.

Errors: :class:`UploadRejected` (an :class:`api.storage.ArtifactError`), ``status_code`` 422,
or 413 when the file or its header is larger than the configured limit.

How the resumable upload routes use it (check ``manifest.size <= max_upload_bytes`` first)::

    upload_id = store.create_partial()                        # POST: keep it with the manifest
    store.partial_size(upload_id)                             # HEAD: the Upload-Offset
    with store.append_partial(upload_id, offset=offset, max_bytes=manifest.size) as a:
        async for chunk in request.stream():                  # PATCH
            a.write(chunk)
    if a.offset == manifest.size:                             # complete: validate + store
        ref, summary = await run_in_threadpool(accept_partial_upload, store, upload_id,
            expected_shapes=plan.upload_shapes(), max_header_bytes=settings.max_header_bytes,
            expected_sha256=manifest.sha256)
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from api.storage import ArtifactError, ArtifactStore, Buffer, StoredArtifact
from fedlora_client.protocol import ALLOWED_DTYPES, MAX_ABS_VALUE, is_safe_tensor_name

CHECK_CHUNK_BYTES = 1024 * 1024
"""Bytes of tensor data examined at a time by the finiteness check (bounds memory)."""

MAX_NDIM = 8
METADATA_BUDGET = 64 * 1024
"""Header bytes allowed beyond the tensor entries (``__metadata__``, padding)."""

# dtype code -> (item size, mask of exponent bits). A float is NaN or +-Inf exactly when all its
# exponent bits are set, so one integer test covers F32, F16 and BF16 (whose bits are the top
# half of an F32: shifting them left by 16 would give the same exponent test) with no float
# conversion, no copies and no floating-point warnings.
_FLOAT_LAYOUT: dict[str, tuple[int, int, np.dtype[Any]]] = {
    "F32": (4, 0x7F800000, np.dtype("<u4")),
    "F16": (2, 0x7C00, np.dtype("<u2")),
    "BF16": (2, 0x7F80, np.dtype("<u2")),
}
assert frozenset(_FLOAT_LAYOUT) == ALLOWED_DTYPES

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (torch.save writes these; they hold pickles)"),
    (b"\x1f\x8b", "a gzip stream"),
    (b"\x93NUMPY", "a numpy .npy file"),
    (b"GGUF", "a GGUF file"),
    (b"\x89HDF", "an HDF5 file"),
)


class UploadRejected(ArtifactError):  # noqa: N818 -- the name the upload routes agreed on
    """The upload is not an acceptable adapter for its task; the message says what is wrong."""

    status_code = 422

    def __init__(self, message: str, *, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class UploadSummary:
    """What a valid upload holds; ``size`` is the whole file (8 + header + data bytes)."""

    tensors: tuple[TensorInfo, ...]
    header_bytes: int
    size: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in self.tensors}

    @property
    def dtypes(self) -> dict[str, str]:
        return {t.name: t.dtype for t in self.tensors}


def _sniff(head: bytes) -> str:
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (torch.save?); pickles are never loaded"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return "no safetensors header"


def header_budget(expected_shapes: Mapping[str, Sequence[int]]) -> int:
    """The most bytes a header describing ``expected_shapes`` can reasonably take.

    Why: parsing JSON costs several times its size in Python objects, so a header padded with
    millions of keys up to the configured limit could cost hundreds of MB. A real header is the
    tensor names plus ~80 bytes each (more if pretty-printed), plus a small ``__metadata__``.
    """
    per_tensor = sum(
        len(name.encode()) + 256 + 24 * len(shape) for name, shape in expected_shapes.items()
    )
    return METADATA_BUDGET + per_tensor


def _read_header(
    f: io.BufferedReader, size: int, max_header_bytes: int, budget: int
) -> tuple[int, dict[str, Any]]:
    head = f.read(9)
    if size < 10:
        raise UploadRejected(f"not a safetensors file: only {size} bytes")
    n = int.from_bytes(head[:8], "little")
    if n > size - 8 or n < 2 or head[8:9] != b"{":
        what = _sniff(head)
        if what != "no safetensors header":
            raise UploadRejected(f"not a safetensors file: it looks like {what}")
        if n > size - 8:
            raise UploadRejected(
                f"not a safetensors file or truncated: the header length field claims {n} "
                f"bytes but only {size - 8} follow it"
            )
        raise UploadRejected("not a safetensors file: the header is not a JSON object")
    if n > max_header_bytes:
        raise UploadRejected(
            f"safetensors header is {n} bytes; the limit is {max_header_bytes}", status_code=413
        )
    if n > budget:
        raise UploadRejected(
            f"safetensors header is {n} bytes, more than a header for the plan's tensors needs "
            f"(at most {budget})"
        )
    raw = head[8:] + f.read(n - 1)
    try:
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are both
        raise UploadRejected(f"safetensors header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise UploadRejected("safetensors header is not a JSON object")
    return n, header


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {_q(key)}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in the header")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _q(value: object, limit: int = 100) -> str:
    """``repr`` cut to ``limit`` characters: messages echo client input, so bound it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _more(names: list[str]) -> str:
    return f"{_q(names[0])}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _tensor_info(name: str, entry: object, expected: tuple[int, ...]) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise UploadRejected(
            f"tensor {_q(name)}: header entry must have exactly dtype, shape and data_offsets"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise UploadRejected(
            f"tensor {_q(name)} has dtype {_q(dtype)}; only {', '.join(sorted(ALLOWED_DTYPES))} "
            "are accepted"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise UploadRejected(f"tensor {_q(name)} has an invalid shape {_q(shape)}")
    if tuple(shape) != expected:
        raise UploadRejected(
            f"tensor {_q(name)} has shape {_q(shape)}; the task's plan expects {list(expected)}"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise UploadRejected(f"tensor {_q(name)} has invalid data_offsets {_q(offsets)}")
    need = math.prod(expected) * _FLOAT_LAYOUT[dtype][0]
    if offsets[1] - offsets[0] != need:
        raise UploadRejected(
            f"tensor {_q(name)}: data_offsets {_q(offsets)} span {_q(offsets[1] - offsets[0])} "
            f"bytes but {dtype} {list(expected)} needs {need}"
        )
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_names(names: set[str], expected: Mapping[str, object]) -> None:
    for name in sorted(names):
        if not is_safe_tensor_name(name):
            raise UploadRejected(
                f"tensor name {_q(name)} is not allowed: names are dotted identifiers "
                "(no '/', '..', spaces or control characters)"
            )
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if extra:
        raise UploadRejected(f"unexpected tensor {_more(extra)} (not in the task's plan)")
    if missing:
        raise UploadRejected(f"missing tensor {_more(missing)} required by the task's plan")


def _check_layout(tensors: list[TensorInfo], data_bytes: int) -> None:
    pos, prev = 0, None
    for t in tensors:
        if t.begin < pos:
            raise UploadRejected(f"tensors {_q(prev)} and {_q(t.name)} overlap in the data region")
        if t.begin > pos:
            raise UploadRejected(f"{t.begin - pos} unused bytes before tensor {_q(t.name)}")
        pos, prev = t.end, t.name
    if pos > data_bytes:
        raise UploadRejected(
            f"file is truncated: tensors need {pos} data bytes but only {data_bytes} follow "
            "the header"
        )
    if pos < data_bytes:
        raise UploadRejected(f"{data_bytes - pos} trailing bytes after the last tensor")


def nonfinite(raw: Buffer, dtype: str) -> npt.NDArray[np.bool_]:
    """True where the little-endian values in ``raw`` (F32, F16 or BF16) are NaN or +-Inf."""
    _, mask, udtype = _FLOAT_LAYOUT[dtype]
    bits = np.frombuffer(raw, dtype=udtype)
    return np.asarray((bits & mask) == mask)


# The smallest exponent field of a value whose magnitude is >= MAX_ABS_VALUE = 2^20, per dtype:
# the bias plus 20 (F16's largest finite value, 65504, is below the bound).
_TOO_LARGE_EXPONENT = {"F32": (127 + 20) << 23, "BF16": (127 + 20) << 7}
assert MAX_ABS_VALUE == 2.0**20


def out_of_range(raw: Buffer, dtype: str) -> npt.NDArray[np.bool_]:
    """True where the values in ``raw`` are NaN, +-Inf, or of magnitude >= ``MAX_ABS_VALUE``."""
    _, mask, udtype = _FLOAT_LAYOUT[dtype]
    bits = np.frombuffer(raw, dtype=udtype)
    floor = _TOO_LARGE_EXPONENT.get(dtype, mask)
    return np.asarray((bits & mask) >= floor)


def _check_finite(f: io.BufferedReader, data_start: int, t: TensorInfo, buf: bytearray) -> None:
    itemsize, mask, _ = _FLOAT_LAYOUT[t.dtype]
    f.seek(data_start + t.begin)
    done, total = 0, t.end - t.begin
    while done < total:
        k = f.readinto(memoryview(buf)[: min(len(buf), total - done)])
        if not k:
            raise UploadRejected(f"file is truncated inside tensor {_q(t.name)}")
        bad = nonfinite(memoryview(buf)[: k - k % itemsize], t.dtype)
        if bad.any():
            i = int(np.argmax(bad))
            value = int.from_bytes(buf[i * itemsize : (i + 1) * itemsize], "little")
            mantissa = (mask | (mask - 1)) ^ mask  # the bits below the exponent
            raise UploadRejected(
                f"tensor {_q(t.name)} contains {'NaN' if value & mantissa else 'Inf'} at element "
                f"{done // itemsize + i}; all values must be finite"
            )
        large = out_of_range(memoryview(buf)[: k - k % itemsize], t.dtype)
        if large.any():
            i = int(np.argmax(large))
            raise UploadRejected(
                f"tensor {_q(t.name)} holds a value of magnitude 2^20 or more at element "
                f"{done // itemsize + i}; every value must be below {MAX_ABS_VALUE:g} (no "
                "trained LoRA update comes near it: check the client's training for divergence)"
            )
        done += k


def validate_safetensors(
    path: Path | str,
    *,
    expected_shapes: Mapping[str, Sequence[int]],
    max_header_bytes: int,
    max_file_bytes: int | None = None,
) -> UploadSummary:
    """Check that ``path`` is a safetensors file holding exactly ``expected_shapes``.

    ``expected_shapes`` is ``TrainingPlan.upload_shapes()``. Raises :class:`UploadRejected`.
    """
    size = os.stat(path).st_size
    if max_file_bytes is not None and size > max_file_bytes:
        raise UploadRejected(
            f"upload too large: {size} bytes exceeds the limit of {max_file_bytes}", status_code=413
        )
    with open(path, "rb") as f:
        n, header = _read_header(f, size, max_header_bytes, header_budget(expected_shapes))
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise UploadRejected("safetensors __metadata__ must map strings to strings")
        _check_names(set(header), expected_shapes)
        tensors = sorted(
            (
                _tensor_info(name, entry, tuple(expected_shapes[name]))
                for name, entry in header.items()
            ),
            key=lambda t: (t.begin, t.end),
        )
        _check_layout(tensors, size - 8 - n)
        buf = bytearray(CHECK_CHUNK_BYTES)  # one bounded buffer, reused for every tensor
        for t in tensors:
            _check_finite(f, 8 + n, t, buf)
    return UploadSummary(tuple(tensors), header_bytes=n, size=size, metadata=metadata)


def store_upload(
    store: ArtifactStore,
    chunks: Iterable[Buffer],
    *,
    expected_shapes: Mapping[str, Sequence[int]],
    max_header_bytes: int,
    max_bytes: int,
    expected_sha256: str | None = None,
) -> tuple[StoredArtifact, UploadSummary]:
    """Stream ``chunks`` into ``store``, validate, commit; a rejection stores nothing.

    For one-shot uploads and server-side files; the resumable routes use
    ``ArtifactStore.append_partial`` and then :func:`accept_partial_upload`.
    """
    with store.begin_write(max_bytes=max_bytes) as writer:
        for chunk in chunks:
            writer.write(chunk)
        summary = validate_safetensors(
            writer.temp_path, expected_shapes=expected_shapes, max_header_bytes=max_header_bytes
        )
        return writer.commit(expected_sha256), summary


def accept_partial_upload(
    store: ArtifactStore,
    upload_id: str,
    *,
    expected_shapes: Mapping[str, Sequence[int]],
    max_header_bytes: int,
    expected_sha256: str | None = None,
) -> tuple[StoredArtifact, UploadSummary]:
    """Validate a complete resumable upload and move it into the store, or delete it.

    Call it once the session's size equals the manifest's. It reads the whole file twice
    (validate, hash), so an async route runs it in a worker thread (``run_in_threadpool``).
    """
    found: list[UploadSummary] = []

    def check(path: Path) -> None:
        found.append(
            validate_safetensors(
                path, expected_shapes=expected_shapes, max_header_bytes=max_header_bytes
            )
        )

    ref = store.finalize_partial(upload_id, expected_sha256=expected_sha256, verify=check)
    return ref, found[0]
