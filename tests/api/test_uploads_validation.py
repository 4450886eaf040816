"""A corpus of bad uploads: each is rejected with a message that names the problem, and nothing
of it stays in the artifact store (neither through the one-shot writer nor a resumable session).

Good files come from ``safetensors.numpy.save``; bad ones are good files corrupted byte-wise or
with their JSON header rewritten, so every case differs from an accepted file in one way.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from api.storage import ArtifactStore, SizeLimitExceededError
from api.uploads import (
    UploadRejected,
    accept_partial_upload,
    nonfinite,
    out_of_range,
    store_upload,
    validate_safetensors,
)
from fedlora_client.protocol import MAX_ABS_VALUE

A = "base_model.model.layer.0.q.lora_A.weight"
B = "base_model.model.layer.0.q.lora_B.weight"
HEAD = "base_model.model.classifier.weight"
EXTRA = "base_model.model.x.weight"
EXPECTED: dict[str, tuple[int, ...]] = {A: (4, 16), B: (16, 4), HEAD: (3, 16)}
MAX_HEADER = 64 * 1024
NAN_F32, INF_F32 = 0x7FC00000, 0x7F800000
NAN_F16, INF_F16 = 0x7E00, 0xFC00  # -Inf for F16, to cover the sign bit
NAN_BF16, INF_BF16 = 0x7FC1, 0x7F80


def tensors(dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in EXPECTED.items()}


def good(dtype: Any = np.float32) -> bytes:
    return save(tensors(dtype), metadata={"format": "pt"})


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def good_bf16() -> bytes:
    """BF16 has no numpy dtype: save the top 16 bits of F32 values as U16, then relabel."""
    bits = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors().items()}
    header, body = split(save(bits))
    for name in EXPECTED:
        header[name]["dtype"] = "BF16"
    return join(header, body)


def edit_header(fn: Callable[[dict[str, Any]], None], data: bytes | None = None) -> bytes:
    header, body = split(data if data is not None else good())
    fn(header)
    return join(header, body)


def poke(data: bytes, name: str, element: int, value: int, width: int) -> bytes:
    """Overwrite one element of tensor ``name`` with raw little-endian bits."""
    header, body = split(data)
    at = header[name]["data_offsets"][0] + element * width
    body = body[:at] + value.to_bytes(width, "little") + body[at + width :]
    return join(header, body)


def edit_raw(fn: Callable[[bytes], bytes]) -> bytes:
    """Edit the header's JSON text itself (for what json.dumps cannot write)."""
    data = good()
    n = struct.unpack("<Q", data[:8])[0]
    return join(fn(data[8 : 8 + n]), data[8 + n :])


def rename(old: str, new: str) -> Callable[[dict[str, Any]], None]:
    return lambda h: h.__setitem__(new, h.pop(old))


def torch_like_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": [1.0, 2.0]}))
    return buf.getvalue()


def shift_offsets(h: dict[str, Any]) -> None:
    second = sorted(EXPECTED, key=lambda k: h[k]["data_offsets"][0])[1]
    h[second]["data_offsets"] = [o - 8 for o in h[second]["data_offsets"]]


def overwide_length(data: bytes) -> bytes:
    return struct.pack("<Q", 2**63) + data[8:]


def set_entry(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda h: h[name].__setitem__(key, value)


# (id, file bytes, status code, words the message must contain)
CORPUS: list[tuple[str, bytes, int, str]] = [
    ("pickle", pickle.dumps({"w": np.zeros(4)}, protocol=4), 422, "pickle"),
    ("pickle-proto2", pickle.dumps([1.0] * 64, protocol=2), 422, "pickle"),
    ("zip", torch_like_zip(), 422, "zip"),
    ("text", b"hello, this is not an adapter at all\n" * 4, 422, "not a safetensors file"),
    ("empty", b"", 422, "not a safetensors file"),
    ("truncated-data", good()[:-10], 422, "truncated"),
    ("truncated-header", good()[:40], 422, "truncated"),
    ("huge-header-length", overwide_length(good()), 422, "claims"),
    ("header-over-limit", join(b"{" + b" " * MAX_HEADER + b"}", b""), 413, "limit"),
    ("huge-claimed-size", edit_header(set_entry(A, "data_offsets", [0, 2**62])), 422, "span"),
    ("nan-f32", poke(good(), A, 5, NAN_F32, 4), 422, "NaN"),
    ("inf-f32", poke(good(), HEAD, 47, INF_F32, 4), 422, "Inf"),
    ("nan-f16", poke(good(np.float16), B, 0, NAN_F16, 2), 422, "NaN"),
    ("inf-f16", poke(good(np.float16), A, 63, INF_F16, 2), 422, "Inf"),
    ("nan-bf16", poke(good_bf16(), B, 7, NAN_BF16, 2), 422, "NaN"),
    ("inf-bf16", poke(good_bf16(), HEAD, 1, INF_BF16, 2), 422, "Inf"),
    ("wrong-shape", save({**tensors(), A: np.zeros((8, 16), np.float32)}), 422, "shape"),
    ("transposed", save({**tensors(), B: np.zeros((4, 16), np.float32)}), 422, "expects [16, 4]"),
    ("wrong-name", edit_header(rename(A, A.replace("lora_A", "lora_X"))), 422, "lora_X"),
    ("extra", save({**tensors(), EXTRA: np.zeros(2, np.float32)}), 422, f"tensor '{EXTRA}'"),
    ("missing", save({k: v for k, v in tensors().items() if k != B}), 422, "missing tensor"),
    ("dtype-i64", save({**tensors(), A: np.zeros((4, 16), np.int64)}), 422, "I64"),
    ("dtype-f64", save({**tensors(), HEAD: np.zeros((3, 16), np.float64)}), 422, "F64"),
    ("path-dotdot", edit_header(rename(A, "../x")), 422, "'../x' is not allowed"),
    ("path-slash", edit_header(rename(HEAD, "a/b")), 422, "'a/b' is not allowed"),
    ("overlap", edit_header(shift_offsets), 422, "overlap"),
    ("trailing", good() + b"\x00" * 8, 422, "trailing"),
    ("metadata-not-str", edit_header(lambda h: h.__setitem__("__metadata__", {"a": 1})), 422,
     "__metadata__"),
    ("metadata-list", edit_header(lambda h: h.__setitem__("__metadata__", ["a"])), 422,
     "__metadata__"),
    ("extra-entry-key", edit_header(set_entry(A, "offset", 3)), 422, "exactly dtype"),
    ("bool-shape", edit_header(set_entry(A, "shape", [True, 16])), 422, "shape"),
    ("nan-in-json", edit_header(set_entry(A, "shape", "NaN")).replace(b'"NaN"', b" NaN "), 422,
     "JSON"),
    ("duplicate-key", edit_raw(lambda r: r.replace(b'{"', b'{"' + A.encode() + b'":0,"', 1)), 422,
     "duplicate key"),
    ("not-utf8", join(b'{"\xff\xfe":1}', b""), 422, "UTF-8"),
    ("header-array", join(b"[1, 2, 3]", b""), 422, "not a safetensors file"),
    ("deep-json", join(b'{"a":' + b"[" * 20_000 + b"]" * 20_000 + b"}", b""), 422, "JSON"),
]  # fmt: skip


def test_good_files_are_accepted(tmp_path: Path) -> None:
    for i, data in enumerate([good(), good(np.float16), good_bf16()]):
        path = tmp_path / f"ok{i}"
        path.write_bytes(data)
        summary = validate_safetensors(path, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER)
        assert summary.shapes == EXPECTED
        assert summary.size == len(data)
        assert set(summary.dtypes.values()) == {["F32", "F16", "BF16"][i]}
    assert summary.metadata == {}


def test_good_file_round_trips_through_the_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = good()
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    ref, summary = store_upload(
        store, chunks, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER, max_bytes=10**6
    )
    assert store.path(ref.sha256).read_bytes() == data
    assert summary.metadata == {"format": "pt"}


def stored_files(store: ArtifactStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("data", "status", "words"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS]
)
def test_bad_upload_is_rejected_and_nothing_is_stored(
    tmp_path: Path, data: bytes, status: int, words: str
) -> None:
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(UploadRejected) as direct:
        store_upload(
            store, [data], expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER, max_bytes=10**7
        )
    assert direct.value.status_code == status
    assert words in str(direct.value), str(direct.value)
    assert stored_files(store) == []

    upload_id = store.create_partial()
    with store.append_partial(upload_id, offset=0) as appender:
        appender.write(data)
    with pytest.raises(UploadRejected) as resumed:
        accept_partial_upload(
            store, upload_id, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER
        )
    assert str(resumed.value) == str(direct.value)
    assert stored_files(store) == []


def test_oversized_upload_is_cut_off_by_the_writer_with_413(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = good()
    with pytest.raises(SizeLimitExceededError, match=f"limit of {len(data) - 1} bytes") as exc:
        store_upload(
            store,
            [data[:100], data[100:]],
            expected_shapes=EXPECTED,
            max_header_bytes=MAX_HEADER,
            max_bytes=len(data) - 1,
        )
    assert exc.value.status_code == 413
    assert stored_files(store) == []


def test_oversized_file_is_rejected_by_the_validator_with_413(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(good())
    with pytest.raises(UploadRejected, match="too large") as exc:
        validate_safetensors(
            path, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER, max_file_bytes=1024
        )
    assert exc.value.status_code == 413


def test_plan_expecting_huge_tensors_does_not_trust_the_header(tmp_path: Path) -> None:
    """A header whose shapes and offsets agree but claim terabytes is caught as truncation."""
    huge = {A: (2**20, 2**20)}
    header = {A: {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}
    path = tmp_path / "huge"
    path.write_bytes(join(header, b"\0" * 64))
    with pytest.raises(UploadRejected, match="truncated"):
        validate_safetensors(path, expected_shapes=huge, max_header_bytes=MAX_HEADER)


def test_header_larger_than_the_plan_needs_is_rejected(tmp_path: Path) -> None:
    """Below the configured limit but far beyond what three tensor entries take."""
    header, body = split(good())
    header["__metadata__"] = {f"k{i}": "v" for i in range(20_000)}
    path = tmp_path / "padded"
    path.write_bytes(join(header, body))
    with pytest.raises(UploadRejected, match="more than a header for the plan") as exc:
        validate_safetensors(path, expected_shapes=EXPECTED, max_header_bytes=16 * 1024**2)
    assert exc.value.status_code == 422


def test_messages_echo_client_input_only_briefly(tmp_path: Path) -> None:
    long_name = "a" * 5000 + "/x"
    path = tmp_path / "long"
    path.write_bytes(edit_header(rename(A, long_name)))
    with pytest.raises(UploadRejected, match="is not allowed") as exc:
        validate_safetensors(path, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER)
    assert len(str(exc.value)) < 300
    path.write_bytes(save({k: v for k, v in tensors().items() if k == A}))
    with pytest.raises(UploadRejected, match=r"missing tensor .* \(and 1 more\)"):
        validate_safetensors(path, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER)


def test_expected_shapes_may_be_lists_from_json(tmp_path: Path) -> None:
    path = tmp_path / "ok"
    path.write_bytes(good())
    as_json = json.loads(json.dumps(EXPECTED))
    summary = validate_safetensors(path, expected_shapes=as_json, max_header_bytes=MAX_HEADER)
    assert summary.shapes == EXPECTED


def test_finiteness_is_checked_across_chunk_boundaries(tmp_path: Path) -> None:
    """A NaN beyond the first 1 MiB chunk (and in the last element) is still found."""
    big = {A: (1024, 1024)}
    data = save({A: np.ones((1024, 1024), np.float32)})
    path = tmp_path / "big"
    path.write_bytes(poke(data, A, 1024 * 1024 - 1, NAN_F32, 4))
    with pytest.raises(UploadRejected, match="NaN at element 1048575"):
        validate_safetensors(path, expected_shapes=big, max_header_bytes=MAX_HEADER)


def test_nonfinite_matches_numpy_on_every_16_bit_pattern() -> None:
    """The exponent-mask test equals numpy's isfinite: F16 natively, BF16 shifted into F32."""
    every = np.arange(2**16, dtype=np.uint16)
    assert (nonfinite(every.tobytes(), "F16") == ~np.isfinite(every.view(np.float16))).all()
    as_f32 = (every.astype(np.uint32) << 16).view(np.float32)
    assert (nonfinite(every.tobytes(), "BF16") == ~np.isfinite(as_f32)).all()
    rng = np.random.default_rng(1)
    bits = np.concatenate(
        [rng.integers(0, 2**32, 2**20, dtype=np.uint32), np.array([INF_F32, NAN_F32, 0xFF800001])]
    )
    assert (nonfinite(bits.tobytes(), "F32") == ~np.isfinite(bits.view(np.float32))).all()


def test_out_of_range_matches_numpy_on_every_16_bit_pattern_and_f32_samples() -> None:
    """NaN, Inf, or magnitude >= MAX_ABS_VALUE (2^20), by the exponent bits alone."""

    def want(values: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return ~(np.abs(values.astype(np.float64)) < MAX_ABS_VALUE)

    every = np.arange(2**16, dtype=np.uint16)
    assert (out_of_range(every.tobytes(), "F16") == want(every.view(np.float16))).all()
    as_f32 = (every.astype(np.uint32) << 16).view(np.float32)
    assert (out_of_range(every.tobytes(), "BF16") == want(as_f32)).all()
    rng = np.random.default_rng(2)
    edges = np.array([2**20, 2**20 - 0.0625, -(2**20), 1e30, 3.0e38], np.float32).view(np.uint32)
    bits = np.concatenate([rng.integers(0, 2**32, 2**20, dtype=np.uint32), edges])
    assert (out_of_range(bits.tobytes(), "F32") == want(bits.view(np.float32))).all()


def test_finite_values_whose_float32_sum_overflows_are_refused(tmp_path: Path) -> None:
    """#14: each value finite, their float32 sum Inf: the worker refused the round; the API
    now refuses the upload with the same rule, naming the tensor and the element."""
    values = np.full((4, 8), 3.0e37, np.float32)
    assert np.isfinite(values).all()
    with np.errstate(over="ignore"):
        assert not np.isfinite(values.sum(dtype=np.float32))
    path = tmp_path / "huge"
    path.write_bytes(save({A: values}))
    with pytest.raises(UploadRejected, match=r"magnitude 2\^20 or more at element 0"):
        validate_safetensors(path, expected_shapes={A: (4, 8)}, max_header_bytes=MAX_HEADER)
    below = np.full((4, 8), 2**20 - 1, np.float32)
    path.write_bytes(save({A: below}))
    validate_safetensors(path, expected_shapes={A: (4, 8)}, max_header_bytes=MAX_HEADER)


def check_never_crashes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz"
    path.write_bytes(data)
    message = "accepted"
    try:
        validate_safetensors(path, expected_shapes=EXPECTED, max_header_bytes=MAX_HEADER)
    except UploadRejected as exc:
        message = str(exc)
    assert message


GOOD = good()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, len(GOOD))),
)
def test_random_byte_mutations_only_raise_upload_rejected(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(GOOD)
    for at, value in edits:
        data[at] = value
    check_never_crashes(tmp_path, bytes(data[:cut]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from([A, B, HEAD, "__metadata__"]),
    key=st.sampled_from(["dtype", "shape", "data_offsets", None]),
    value=json_values,
)
def test_random_header_values_only_raise_upload_rejected(
    tmp_path: Path, name: str, key: str | None, value: Any
) -> None:
    header, body = split(GOOD)
    if key is None or name == "__metadata__":
        header[name] = value
    else:
        header[name][key] = value
    check_never_crashes(tmp_path, join(header, body))
