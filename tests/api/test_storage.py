"""The artifact store: content addressing, atomic and idempotent commits, resumable sessions."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from api.storage import (
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactStore,
    ArtifactWriter,
    DigestMismatchError,
    OffsetMismatchError,
    PartialAppender,
    SizeLimitExceededError,
    StoredArtifact,
    UploadBusyError,
)

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()


def files(store: ArtifactStore) -> list[str]:
    return sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())


def write_chunks(
    target: ArtifactWriter | PartialAppender,
    chunks: list[bytes],
    then: BaseException | None = None,
) -> None:
    """Write inside the target's ``with`` block, then fail like a dropped request if asked."""
    with target as t:
        for chunk in chunks:
            t.write(chunk)
        if then is not None:
            raise then


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_content_is_stored_under_its_sha256(store: ArtifactStore) -> None:
    ref = store.put_bytes(DATA)
    assert ref == StoredArtifact(sha256=SHA, size=len(DATA))
    assert files(store) == [f"sha256/{SHA[:2]}/{SHA[2:]}"]
    assert store.exists(SHA)
    assert store.size(SHA) == len(DATA)
    assert not stat.S_IMODE(store.path(SHA).stat().st_mode) & 0o222, "stored files are read-only"
    with store.open(SHA) as f:
        assert f.read() == DATA


def test_iter_chunks_streams_in_bounded_chunks(store: ArtifactStore) -> None:
    store.put_bytes(DATA)
    chunks = list(store.iter_chunks(SHA, chunk_size=64 * 1024))
    assert max(len(c) for c in chunks) == 64 * 1024
    assert b"".join(chunks) == DATA
    ranged = list(store.iter_chunks(SHA, 1000, start=10, stop=2510))
    assert [len(c) for c in ranged] == [1000, 1000, 500]
    assert b"".join(ranged) == DATA[10:2510]
    assert b"".join(store.iter_chunks(SHA, start=len(DATA) - 5)) == DATA[-5:]
    assert list(store.iter_chunks(SHA, start=5, stop=5)) == []


def test_streamed_write_hashes_what_it_counts(store: ArtifactStore) -> None:
    with store.begin_write() as w:
        for i in range(0, len(DATA), 100_000):
            w.write(memoryview(DATA)[i : i + 100_000])
        assert w.size == len(DATA)
        ref = w.commit(expected_sha256=SHA)
    assert ref.sha256 == SHA
    assert files(store) == [f"sha256/{SHA[:2]}/{SHA[2:]}"]


def test_put_file_copies_path_and_file_object(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    assert store.put_file(src).sha256 == SHA
    with src.open("rb") as f:
        assert store.put_file(f, expected_sha256=SHA).sha256 == SHA


def test_commit_is_idempotent(store: ArtifactStore) -> None:
    first = store.put_bytes(DATA)
    second = store.put_bytes(DATA)
    assert first == second
    assert len(files(store)) == 1


def test_digest_mismatch_stores_nothing(store: ArtifactStore) -> None:
    with pytest.raises(DigestMismatchError, match=f"hash to {SHA}") as exc:
        store.put_bytes(DATA, expected_sha256="0" * 64)
    assert exc.value.status_code == 422
    assert files(store) == []


def test_abort_and_exceptions_leave_nothing(store: ArtifactStore) -> None:
    w = store.begin_write()
    w.write(DATA)
    assert w.temp_path.stat().st_size == len(DATA), "temp_path is flushed for validators"
    w.abort()
    w.abort()
    assert files(store) == []
    with pytest.raises(RuntimeError):
        write_chunks(store.begin_write(), [DATA], then=RuntimeError("client went away"))
    assert files(store) == []
    with pytest.raises(ArtifactError, match="after commit or abort"):
        w.write(b"x")


def test_size_limit_aborts_the_write(store: ArtifactStore) -> None:
    with pytest.raises(SizeLimitExceededError, match="exceeds the limit of 1000 bytes") as exc:
        write_chunks(store.begin_write(max_bytes=1000), [b"a" * 600, b"b" * 600])
    assert exc.value.status_code == 413
    assert files(store) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, SHA[:63], SHA + "0", ""])
def test_hashes_never_become_paths(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(ArtifactNotFoundError):
        store.open(bad)
    with pytest.raises(ArtifactNotFoundError):
        store.path(bad)


def test_missing_artifact_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFoundError) as exc:
        store.iter_chunks(SHA)
    assert exc.value.status_code == 404
    assert not store.exists(SHA)


# --------------------------------------------------------------------------- resumable


def test_resumable_append_at_offset_then_finalize(store: ArtifactStore) -> None:
    uid = store.create_partial()
    assert store.partial_size(uid) == 0
    cut = 1_000_000
    with store.append_partial(uid, offset=0) as a:
        a.write(DATA[:cut])
    assert store.partial_size(uid) == cut
    with store.append_partial(uid, offset=cut, max_bytes=len(DATA)) as a:
        a.write(DATA[cut:])
        assert a.offset == len(DATA)
    ref = store.finalize_partial(uid, expected_sha256=SHA)
    assert ref == StoredArtifact(SHA, len(DATA))
    assert files(store) == [f"sha256/{SHA[:2]}/{SHA[2:]}"]
    with pytest.raises(ArtifactNotFoundError):
        store.partial_size(uid)


def test_wrong_offset_names_the_expected_offset(store: ArtifactStore) -> None:
    uid = store.create_partial()
    with store.append_partial(uid, offset=0) as a:
        a.write(b"x" * 10)
    for wrong in (0, 5, 11):
        with pytest.raises(OffsetMismatchError, match="expected 10") as exc:
            store.append_partial(uid, offset=wrong)
        assert (exc.value.expected, exc.value.got, exc.value.status_code) == (10, wrong, 409)
    assert store.partial_size(uid) == 10


def test_interrupted_append_keeps_received_bytes(store: ArtifactStore) -> None:
    uid = store.create_partial()
    with pytest.raises(ConnectionError):
        write_chunks(store.append_partial(uid, offset=0), [b"x" * 100], then=ConnectionError())
    assert store.partial_size(uid) == 100


def test_append_past_the_limit_rolls_back_that_request(store: ArtifactStore) -> None:
    uid = store.create_partial()
    with store.append_partial(uid, offset=0, max_bytes=100) as a:
        a.write(b"x" * 60)
    with pytest.raises(SizeLimitExceededError):
        write_chunks(store.append_partial(uid, offset=60, max_bytes=100), [b"y" * 30] * 2)
    assert store.partial_size(uid) == 60


def test_concurrent_append_to_one_session_is_refused(store: ArtifactStore) -> None:
    uid = store.create_partial()
    with store.append_partial(uid, offset=0) as a:
        a.write(b"x")
        with pytest.raises(UploadBusyError) as exc:
            store.append_partial(uid, offset=0)
        assert exc.value.status_code == 409
        with pytest.raises(UploadBusyError):
            store.finalize_partial(uid)
    assert store.finalize_partial(uid).size == 1


def test_racing_appends_at_one_offset_have_one_winner(store: ArtifactStore) -> None:
    uid = store.create_partial()

    def append(i: int) -> str:
        try:
            write_chunks(store.append_partial(uid, offset=0), [bytes([i]) * 4096] * 64)
        except (UploadBusyError, OffsetMismatchError) as exc:
            return type(exc).__name__
        return f"won {i}"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(append, range(8)))
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    i = int(winners[0].split()[1])
    assert store.partial_path(uid).read_bytes() == bytes([i]) * 4096 * 64


def test_append_racing_a_finalize_cannot_touch_the_stored_artifact(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appender opens the session, then (before it locks) the session is finalized."""
    uid = store.create_partial()
    write_chunks(store.append_partial(uid, offset=0), [b"final"])
    real_flock = fcntl.flock
    refs: list[StoredArtifact] = []

    def finalize_first(fd: int, operation: int) -> None:
        monkeypatch.setattr(fcntl, "flock", real_flock)
        refs.append(store.finalize_partial(uid))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", finalize_first)
    with pytest.raises(ArtifactNotFoundError):
        store.append_partial(uid, offset=5)
    assert store.path(refs[0].sha256).read_bytes() == b"final"


def test_rejected_session_leaves_nothing(store: ArtifactStore) -> None:
    uid = store.create_partial()
    with store.append_partial(uid, offset=0) as a:
        a.write(DATA)

    def refuse(path: Path) -> None:
        assert path.stat().st_size == len(DATA)
        raise ArtifactError("bad file")

    with pytest.raises(ArtifactError, match="bad file"):
        store.finalize_partial(uid, verify=refuse)
    assert files(store) == []
    uid = store.create_partial()
    with pytest.raises(DigestMismatchError):
        store.finalize_partial(uid, expected_sha256=SHA)
    assert files(store) == []


@pytest.mark.parametrize("bad", ["../x", "0" * 36, "not-a-uuid", str(os.sep)])
def test_session_ids_never_become_paths(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(ArtifactNotFoundError):
        store.partial_size(bad)
    with pytest.raises(ArtifactNotFoundError):
        store.append_partial(bad, offset=0)


def test_unknown_session_is_not_found(store: ArtifactStore) -> None:
    uid = store.create_partial()
    store.discard_partial(uid)
    with pytest.raises(ArtifactNotFoundError):
        store.append_partial(uid, offset=0)
    with pytest.raises(ArtifactNotFoundError):
        store.finalize_partial(uid)


# --------------------------------------------------------------------------- concurrency


def _put_in_process(root: str) -> tuple[str, int]:
    ref = ArtifactStore(root).put_bytes(DATA_FOR_PROCESSES)
    return ref.sha256, ref.size


DATA_FOR_PROCESSES = bytes(range(256)) * 8192


def test_concurrent_writers_of_the_same_content(store: ArtifactStore) -> None:
    with ThreadPoolExecutor(8) as pool:
        refs = list(pool.map(lambda _: store.put_bytes(DATA), range(16)))
    assert set(refs) == {StoredArtifact(SHA, len(DATA))}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_put_in_process, [str(store.root)] * 8)
    sha = hashlib.sha256(DATA_FOR_PROCESSES).hexdigest()
    assert set(results) == {(sha, len(DATA_FOR_PROCESSES))}
    assert store.path(sha).read_bytes() == DATA_FOR_PROCESSES
    assert files(store) == sorted([f"sha256/{SHA[:2]}/{SHA[2:]}", f"sha256/{sha[:2]}/{sha[2:]}"])


def test_sweep_removes_only_stale_temp_files_and_sessions(store: ArtifactStore) -> None:
    ref = store.put_bytes(b"kept")
    stale_writer = store.begin_write()
    stale_writer.write(b"half an upload")
    stale_session, fresh_session, busy_session = (store.create_partial() for _ in range(3))
    old = 1_000_000_000.0
    for path in (stale_writer.temp_path, store.partial_path(stale_session)):
        os.utime(path, (old, old))
    os.utime(store.partial_path(busy_session), (old, old))
    with store.append_partial(busy_session, offset=0):
        assert store.sweep(older_than_seconds=3600) == 2
    assert store.exists(ref.sha256)
    assert store.partial_size(fresh_session) == 0
    assert store.partial_size(busy_session) == 0
    with pytest.raises(ArtifactNotFoundError):
        store.partial_size(stale_session)
    assert not stale_writer.temp_path.exists()
    stale_writer.abort()
