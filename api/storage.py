"""Content-addressed artifact store: every file is named by its sha256, never by a client.

Why content addressing: uploads come from other organizations, so a client-supplied name is an
attack surface (``../``, overwrites, collisions). Naming files by hash makes writes idempotent
(the same bytes land at the same path) and lets downloads be verified end to end.

Layout under ``root`` (all on one filesystem, so ``os.replace`` is an atomic rename)::

    sha256/ab/cdef...    committed artifacts (read-only, 0o444)
    tmp/                 files being written by an ArtifactWriter; renamed into place on commit
    partial/<uuid>       resumable upload sessions; the file size is the session's offset

Nothing is ever held in memory whole: writers take chunks, readers yield chunks.

Error tree (one base; ``status_code`` is the HTTP status the API maps each error to)::

    ArtifactError (500)
    +-- ArtifactNotFoundError (404)        unknown sha256 or upload session id
    +-- OffsetMismatchError (409)          append at an offset other than the session's size
    +-- UploadBusyError (409)              another request is appending to the same session
    +-- SizeLimitExceededError (413)       more bytes than the caller's max_bytes
    +-- DigestMismatchError (422)          the bytes do not hash to the sha256 the client declared
    +-- api.uploads.UploadRejected    (422 or 413) the file is not an acceptable adapter

A second backend (S3-compatible) would implement :class:`ContentStore`; ``path`` and the
partial-file methods are local-directory features the upload routes use for resumable uploads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

CHUNK_SIZE = 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Buffer = bytes | bytearray | memoryview


class ArtifactError(Exception):
    """Base of every storage and upload-validation error; ``status_code`` is the HTTP mapping."""

    status_code: int = 500


class ArtifactNotFoundError(ArtifactError):
    status_code = 404


class OffsetMismatchError(ArtifactError):
    """A resumable append did not start where the session ends; the client should HEAD again."""

    status_code = 409

    def __init__(self, *, expected: int, got: int) -> None:
        super().__init__(f"upload offset {got} is not where the upload ends; expected {expected}")
        self.expected, self.got = expected, got


class UploadBusyError(ArtifactError):
    status_code = 409


class SizeLimitExceededError(ArtifactError):
    status_code = 413

    def __init__(self, *, limit: int, size: int) -> None:
        super().__init__(f"upload too large: {size} bytes exceeds the limit of {limit} bytes")
        self.limit, self.size = limit, size


class DigestMismatchError(ArtifactError):
    status_code = 422

    def __init__(self, *, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch: declared {expected}, received bytes hash to {actual}")
        self.expected, self.actual = expected, actual


@dataclass(frozen=True)
class StoredArtifact:
    """What a commit returns: the address (sha256 hex) and byte size of the stored file."""

    sha256: str
    size: int


class ContentStore(Protocol):
    """The backend-neutral part of the store, for code that only reads and writes by hash."""

    def begin_write(self, *, max_bytes: int | None = None) -> ArtifactWriter: ...
    def put_bytes(self, data: Buffer, *, expected_sha256: str | None = None) -> StoredArtifact: ...
    def exists(self, sha256: str) -> bool: ...
    def iter_chunks(
        self, sha256: str, chunk_size: int = CHUNK_SIZE, *, start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]: ...


def check_sha256(sha256: str) -> str:
    """Reject anything but 64 lowercase hex digits, so a hash can never become a path."""
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise ArtifactNotFoundError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def _check_upload_id(upload_id: str) -> str:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        if str(uuid.UUID(upload_id)) == upload_id:  # canonical form only: never a path
            return upload_id
    raise ArtifactNotFoundError(f"unknown upload session {upload_id!r}")


def _lock_session(path: Path, mode: Literal["rb", "r+b"]) -> BinaryIO:
    """Open a session file and take its exclusive lock without waiting.

    After locking, the path must still name the same file: a session finalized (renamed into
    the store) or discarded while we waited must not be written through a stale descriptor.
    """
    try:
        f = path.open(mode)
    except FileNotFoundError:
        raise ArtifactNotFoundError(f"unknown upload session {path.name!r}") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.stat(path).st_ino != os.fstat(f.fileno()).st_ino:
            raise FileNotFoundError(path)
    except BlockingIOError:
        f.close()
        raise UploadBusyError(f"upload session {path.name} is busy with another request") from None
    except FileNotFoundError:
        f.close()
        raise ArtifactNotFoundError(f"unknown upload session {path.name!r}") from None
    return f


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactWriter:
    """Streams one artifact to a temp file, hashing and counting; ``commit`` renames it in place.

    Use as a context manager: leaving the block without ``commit`` aborts (deletes the temp
    file), so a rejected or interrupted upload leaves nothing behind. ``temp_path`` lets the
    caller validate the complete file before committing it.
    """

    def __init__(self, store: ArtifactStore, *, max_bytes: int | None) -> None:
        fd, name = tempfile.mkstemp(dir=store.root / "tmp", prefix="write-")
        self._store = store
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self.size = 0

    @property
    def temp_path(self) -> Path:
        """The file written so far, flushed so a validator reading it sees every byte."""
        if self._file is not None:
            self._file.flush()
        return self._path

    def write(self, chunk: Buffer) -> None:
        if self._file is None:
            raise ArtifactError("write after commit or abort")
        n = memoryview(chunk).nbytes
        if self._max is not None and self.size + n > self._max:
            self.abort()
            raise SizeLimitExceededError(limit=self._max, size=self.size + n)
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += n

    def commit(self, expected_sha256: str | None = None) -> StoredArtifact:
        """Make the file durable and atomically visible under its hash (a no-op if present)."""
        if self._file is None:
            raise ArtifactError("commit after commit or abort")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        digest = self._hash.hexdigest()
        if expected_sha256 is not None and expected_sha256 != digest:
            self._path.unlink(missing_ok=True)
            raise DigestMismatchError(expected=expected_sha256, actual=digest)
        self._store._install(self._path, digest)
        return StoredArtifact(sha256=digest, size=self.size)

    def abort(self) -> None:
        """Delete the temp file; safe to call more than once."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self.abort()


class PartialAppender:
    """Appends one request's bytes to a resumable upload session, holding an exclusive lock.

    The lock makes two concurrent requests for one session fail fast (:class:`UploadBusyError`)
    instead of interleaving bytes. Bytes written before an interruption are kept (the client
    resumes from the new offset); bytes past ``max_bytes`` are rolled back and rejected.
    """

    def __init__(self, path: Path, *, offset: int, max_bytes: int | None) -> None:
        self._file = _lock_session(path, "r+b")
        size = os.fstat(self._file.fileno()).st_size
        if offset != size:
            self._file.close()
            raise OffsetMismatchError(expected=size, got=offset)
        self._file.seek(offset)
        self._start = self.offset = offset
        self._max = max_bytes

    def write(self, chunk: Buffer) -> None:
        n = memoryview(chunk).nbytes
        if self._max is not None and self.offset + n > self._max:
            attempted = self.offset + n
            self._file.truncate(self._start)  # reject the whole request, keep earlier ones
            self.offset = self._start
            self.close()
            raise SizeLimitExceededError(limit=self._max, size=attempted)
        self._file.write(chunk)
        self.offset += n

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()  # closing the descriptor releases the flock

    def __enter__(self) -> PartialAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ArtifactStore:
    """The local-directory store (the embedded default). Safe for many processes at once."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        for sub in ("sha256", "tmp", "partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ content by hash

    def path(self, sha256: str) -> Path:
        """Where the artifact lives (whether or not it exists); local backend only."""
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        with self.open(sha256) as f:
            return os.fstat(f.fileno()).st_size

    def open(self, sha256: str) -> BinaryIO:
        """A binary file open for reading; the caller closes it."""
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {sha256}") from None

    def iter_chunks(
        self, sha256: str, chunk_size: int = CHUNK_SIZE, *, start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]:
        """Yield bytes ``[start, stop)`` in bounded chunks (streaming and Range responses)."""
        f = self.open(sha256)  # raises here, before the first chunk, if it is missing
        f.seek(start)
        return self._chunks(f, chunk_size, 1 << 62 if stop is None else stop - start)

    @staticmethod
    def _chunks(f: BinaryIO, chunk_size: int, left: int) -> Iterator[bytes]:
        with f:
            while left > 0 and (chunk := f.read(min(chunk_size, left))):
                left -= len(chunk)
                yield chunk

    def begin_write(self, *, max_bytes: int | None = None) -> ArtifactWriter:
        return ArtifactWriter(self, max_bytes=max_bytes)

    def put_bytes(self, data: Buffer, *, expected_sha256: str | None = None) -> StoredArtifact:
        with self.begin_write() as w:
            w.write(data)
            return w.commit(expected_sha256)

    def put_file(
        self, source: Path | str | BinaryIO, *, expected_sha256: str | None = None
    ) -> StoredArtifact:
        """Copy a local file (path or open binary file) into the store, chunk by chunk."""
        if isinstance(source, Path | str):
            with open(source, "rb") as f:
                return self.put_file(f, expected_sha256=expected_sha256)
        with self.begin_write() as w:
            while chunk := source.read(CHUNK_SIZE):
                w.write(chunk)
            return w.commit(expected_sha256)

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def _install(self, src: Path, digest: str) -> None:
        dest = self.path(digest)
        if dest.is_file():  # same bytes already stored: idempotent
            src.unlink(missing_ok=True)
            return
        dest.parent.mkdir(exist_ok=True)
        os.chmod(src, 0o444)
        os.replace(src, dest)  # atomic; concurrent writers of equal bytes both succeed
        _fsync_dir(dest.parent)

    # ------------------------------------------------------------------ resumable uploads

    def create_partial(self) -> str:
        """Start an upload session; returns its id (a store-generated UUID, never the client's)."""
        upload_id = str(uuid.uuid4())
        (self.root / "partial" / upload_id).touch(exist_ok=False)
        return upload_id

    def partial_path(self, upload_id: str) -> Path:
        return self.root / "partial" / _check_upload_id(upload_id)

    def partial_size(self, upload_id: str) -> int:
        """Bytes received so far: the offset the client resumes from."""
        try:
            return self.partial_path(upload_id).stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"unknown upload session {upload_id!r}") from None

    def append_partial(
        self, upload_id: str, *, offset: int, max_bytes: int | None = None
    ) -> PartialAppender:
        """Open the session for appending at ``offset`` (must equal its size)."""
        return PartialAppender(self.partial_path(upload_id), offset=offset, max_bytes=max_bytes)

    def finalize_partial(
        self,
        upload_id: str,
        *,
        expected_sha256: str | None = None,
        verify: Callable[[Path], object] | None = None,
    ) -> StoredArtifact:
        """Move a complete session into the content store.

        ``verify(path)`` runs first, under the session lock so no append can change the file
        while it is checked. If ``verify`` raises or the hash differs, the session file is
        deleted and the error propagates: nothing of a rejected upload stays stored.
        """
        path = self.partial_path(upload_id)
        with _lock_session(path, "rb") as f:
            try:
                if verify is not None:
                    verify(path)
                h = hashlib.sha256()
                for chunk in iter(lambda: f.read(CHUNK_SIZE), b""):
                    h.update(chunk)
                digest, size = h.hexdigest(), f.tell()
                if expected_sha256 is not None and expected_sha256 != digest:
                    raise DigestMismatchError(expected=expected_sha256, actual=digest)
            except Exception:
                path.unlink(missing_ok=True)
                raise
            self._install(path, digest)
        return StoredArtifact(sha256=digest, size=size)

    def discard_partial(self, upload_id: str) -> None:
        self.partial_path(upload_id).unlink(missing_ok=True)

    def sweep(self, *, older_than_seconds: float) -> int:
        """Delete temp files and upload sessions untouched for that long (crashed or abandoned
        uploads); sessions receiving a request are skipped. Returns how many were removed."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for sub in ("tmp", "partial"):
            for path in (self.root / sub).iterdir():
                with contextlib.suppress(FileNotFoundError, ArtifactError):
                    if path.stat().st_mtime >= cutoff:
                        continue
                    # a session is unlinked under its lock, so one receiving a request is skipped
                    with (
                        _lock_session(path, "rb") if sub == "partial" else contextlib.nullcontext()
                    ):
                        path.unlink()
                    removed += 1
        return removed
