"""Named errors of the aggregation engine (torch-free, so the API can catch them by name).

Every check that can fail runs before any arithmetic: an aggregation either raises one of these
or runs to the end. The tree::

    StrategyError                     base of everything the engine raises on bad input
    ├── UpdateValidationError         an upload does not match what its plan asked for
    │   ├── UnknownClientError        the client was not planned in this round
    │   ├── DuplicateUpdateError      two updates for one client
    │   ├── LoraSpecMismatchError     rank or scaling differs from the plan's LoraSpec
    │   ├── MissingTensorError        a tensor the plan's upload list holds is absent
    │   ├── UnexpectedTensorError     a tensor outside the plan's upload list
    │   │   └── PrivateModuleUploadError  SDFLoRA: private-module tensors were uploaded
    │   ├── ShapeMismatchError        a tensor has the wrong shape (also raised by linalg)
    │   └── NonFiniteUpdateError      NaN or Inf in an upload
    ├── NoUpdatesError                aggregate() called without any update
    ├── StateMismatchError            a ServerState does not fit the model or the strategy
    └── PlanError                     a round cannot be planned (e.g. no participants)
"""

from __future__ import annotations


class StrategyError(Exception):
    """Base of every error the aggregation engine raises on bad input."""


class UpdateValidationError(StrategyError, ValueError):
    """A client update does not match its plan; the update should be rejected."""

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        super().__init__(f"client {client_id}: {message}" if client_id else message)
        self.client_id = client_id


class UnknownClientError(UpdateValidationError):
    """The update's client was not a planned participant of this round."""


class DuplicateUpdateError(UpdateValidationError):
    """More than one update for the same client."""


class LoraSpecMismatchError(UpdateValidationError):
    """The update's LoraSpec (rank, scaling) is not the one its plan asked for."""


class MissingTensorError(UpdateValidationError):
    """A tensor of the plan's upload list is missing from the update."""


class UnexpectedTensorError(UpdateValidationError):
    """The update holds a tensor that is not on the plan's upload list."""


class PrivateModuleUploadError(UnexpectedTensorError):
    """SDFLoRA: the update holds private-module tensors, which must never leave the client."""


class ShapeMismatchError(UpdateValidationError):
    """A tensor's shape does not match the shape the plan or the operation requires."""


class NonFiniteUpdateError(UpdateValidationError):
    """An update tensor holds NaN or Inf."""


class NoUpdatesError(StrategyError, ValueError):
    """aggregate() needs at least one update."""


class StateMismatchError(StrategyError, ValueError):
    """A ServerState does not fit the federation's model or the strategy that reads it."""


class PlanError(StrategyError, ValueError):
    """The round cannot be planned with the given context."""
