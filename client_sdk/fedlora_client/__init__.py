"""fedlora-client: take part in a fedlora federation from your own machine.

The public API is re-exported here. Heavy modules (torch, transformers, peft) load only when
one of their names is first used, so ``fedlora_client.protocol`` stays importable by the server
without torch.

Quick start::

    from fedlora_client import FedloraClient, Participant, participate

    client = FedloraClient.enroll("https://fedlora.example.org", "<join token>")
    participant = Participant(client, "/models/all-MiniLM-L6-v2", "train.jsonl")
    participate(participant)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    # client and participation
    "FedloraClient": "_client",
    "Credentials": "_credentials",
    "RetryPolicy": "_http",
    "Participant": "_participant",
    "participate": "_run",
    "run": "_run",
    "run_once": "_run",
    "ClientConfig": "_config",
    # model, data, training
    "model_fingerprint": "_model",
    "check_fingerprint": "_model",
    "inspect_model": "_model",
    "load_base_model": "_model",
    "DataFields": "_data",
    "encode_data": "_data",
    "build_peft_model": "_adapters",
    "tail_norm": "_adapters",
    "train_round": "_training",
    "RoundResult": "_training",
    # privacy
    "PrivacyLedger": "_accounting",
    "epsilon_of": "_accounting",
    "calibrate_noise": "_accounting",
    "sample_level_event": "_accounting",
    "client_level_event": "_accounting",
    "clip_update": "_privacy",
    "privatize_update": "_privacy",
    # errors
    "FedloraClientError": "_errors",
    "ConfigError": "_errors",
    "ModelLoadError": "_errors",
    "FingerprintMismatchError": "_errors",
    "DataError": "_errors",
    "DataFileNotFoundError": "_errors",
    "DataColumnError": "_errors",
    "PlanError": "_errors",
    "ArtifactIntegrityError": "_errors",
    "PrivacyError": "_errors",
    "NonFiniteUpdateError": "_errors",
    "PrivacyBudgetExceededError": "_errors",
    "TrainingOutOfMemoryError": "_errors",
    "TransportError": "_errors",
    "ServerError": "_errors",
    "AuthenticationError": "_errors",
    "PermissionDeniedError": "_errors",
    "NotFoundError": "_errors",
    "ConflictError": "_errors",
    "PayloadTooLargeError": "_errors",
    "UnprocessableError": "_errors",
    "RateLimitedError": "_errors",
    "ServerUnavailableError": "_errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # static re-exports for type checkers; at runtime __getattr__ loads lazily
    from fedlora_client._client import FedloraClient as FedloraClient
    from fedlora_client._participant import Participant as Participant
    from fedlora_client._run import participate as participate
    from fedlora_client._run import run as run


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedlora_client' has no attribute {name!r}")
    return getattr(import_module(f"fedlora_client.{module}"), name)
