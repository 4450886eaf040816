"""fedlora-client: take part in a fedlora federation from your own machine.

The public API is re-exported here. Heavy modules (torch, transformers, peft) load only when
one of their names is first used, so ``fedlora_client.protocol`` stays importable by the server
without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedlora_client' has no attribute {name!r}")
    return getattr(import_module(f"fedlora_client.{module}"), name)
