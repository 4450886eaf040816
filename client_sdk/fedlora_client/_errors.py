"""Every error the SDK raises, under one base class, each with a message that says what to do.

The tree::

    FedloraClientError
    ├── ConfigError                 a local setting is missing or invalid (client.toml, paths)
    │   ├── ModelLoadError          the base model cannot be found or read locally
    │   ├── FingerprintMismatchError  the local model is not the federation's model
    │   └── DataError               the local data cannot be used
    │       ├── DataFileNotFoundError
    │       └── DataColumnError     a required column/field is missing (names the available ones)
    ├── PlanError                   the server's plan or artifact does not fit this client
    │   └── ArtifactIntegrityError  a download's sha256 or size differs from the plan's
    ├── PrivacyError
    │   ├── NonFiniteUpdateError    the update holds NaN/inf; it is never uploaded
    │   └── PrivacyBudgetExceededError  the task would push the client past its epsilon budget
    ├── TrainingOutOfMemoryError    the accelerator ran out of memory (suggests smaller rank/batch)
    ├── TransportError              the network failed, retries included
    └── ServerError                 the server answered with an error status (``status_code``)
        ├── AuthenticationError     401: missing/invalid API key -> enroll again
        ├── PermissionDeniedError   403: not a member, or not allowed
        ├── NotFoundError           404: task/federation/upload gone (lease expired?)
        ├── ConflictError           409: state changed (task already submitted, round closed)
        ├── PayloadTooLargeError    413: upload bigger than the server accepts
        ├── UnprocessableError      422: the request or upload was rejected as invalid
        ├── RateLimitedError        429: too many requests (retried before it surfaces)
        └── ServerUnavailableError  5xx: the server failed (retried before it surfaces)
"""

from __future__ import annotations


class FedloraClientError(Exception):
    """Base class of every error raised by fedlora-client."""


class ConfigError(FedloraClientError):
    """A local setting is missing or invalid."""


class ModelLoadError(ConfigError):
    """The base model cannot be found or read from the local path."""


class FingerprintMismatchError(ConfigError):
    """The local base model differs from the one the federation was created with."""

    def __init__(self, local: str, expected: str) -> None:
        self.local = local
        self.expected = expected
        super().__init__(
            f"local base model fingerprint {local[:12]}... differs from the federation's "
            f"{expected[:12]}...: point model_path at the exact checkpoint the federation uses "
            "(same config and weights; run `fedlora-client inspect` to compare)"
        )


class DataError(ConfigError):
    """The local data cannot be used."""


class DataFileNotFoundError(DataError):
    """The data file does not exist."""


class DataColumnError(DataError):
    """A required column is missing; the message names the available columns."""

    def __init__(self, missing: str, available: list[str], source: str) -> None:
        self.missing = missing
        self.available = available
        super().__init__(
            f"{source}: column {missing!r} not found; available columns: "
            f"{', '.join(repr(c) for c in available) or '(none)'}. "
            "Set the field names in client.toml [data] (text_field, label_field, ...)."
        )


class PlanError(FedloraClientError):
    """The server's training plan or one of its artifacts does not fit this client."""


class ArtifactIntegrityError(PlanError):
    """A downloaded artifact does not match the sha256 or size the plan announced."""


class PrivacyError(FedloraClientError):
    """A differential-privacy guarantee cannot be kept."""


class NonFiniteUpdateError(PrivacyError):
    """The update holds NaN or infinity. It is never uploaded."""


class PrivacyBudgetExceededError(PrivacyError):
    """Taking the task would push the client past its epsilon budget; the task is refused."""

    def __init__(self, spent: float, task: float, budget: float) -> None:
        self.spent = spent
        self.task = task
        self.budget = budget
        super().__init__(
            f"refusing the task: epsilon spent {spent:.3f} + this task {task:.3f} would exceed "
            f"the budget {budget:.3f}. Ask the federation admin to raise the budget or the noise."
        )


class TrainingOutOfMemoryError(FedloraClientError):
    """The accelerator ran out of memory during local training."""


class TransportError(FedloraClientError):
    """The server could not be reached (after retries)."""


class ServerError(FedloraClientError):
    """The server answered with an error status."""

    def __init__(self, message: str, *, status_code: int, detail: str = "") -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{message} (HTTP {status_code}{': ' + detail if detail else ''})")


class AuthenticationError(ServerError):
    """401."""


class PermissionDeniedError(ServerError):
    """403."""


class NotFoundError(ServerError):
    """404."""


class ConflictError(ServerError):
    """409."""


class PayloadTooLargeError(ServerError):
    """413."""


class UnprocessableError(ServerError):
    """422."""


class RateLimitedError(ServerError):
    """429. ``retry_after``: seconds the server asked to wait, if it said."""

    retry_after: float | None = None


class ServerUnavailableError(ServerError):
    """5xx."""
