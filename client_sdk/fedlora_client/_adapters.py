"""Build the PEFT model a plan describes, and map its parameters to PEFT saved key names.

* The trained LoRA is the PEFT adapter ``"default"``: ``LoraConfig(r, lora_alpha, use_rslora)``
  from ``plan.lora`` on the full module paths of ``plan.model.modules``; the classification head
  (``plan.model.extra_trainable``) is a ``modules_to_save`` module of that adapter.
* ``plan.start`` initialises it. Its factors are stored at ``plan.start.lora``'s scale: B is
  multiplied by ``start.scaling / plan.scaling`` so the effective update ``s B A`` is unchanged;
  a start of higher rank is truncated to its prefix.
* FLoRA (``plan.merge``): that adapter is merged into the base weights with PEFT's
  ``merge_and_unload`` before the fresh LoRA is attached.
* SDFLoRA (``plan.private``): a second LoRA adapter ``"private"`` on the same modules, active
  together with ``"default"`` (PEFT sums the active adapters), without a head of its own. Its
  tensors are kept on local disk between rounds and never uploaded.
* PreLort (``plan.nested_truncations``): :class:`NestedTruncation` masks rank components
  ``>= b`` with a forward pre-hook on every ``lora_B`` (scale unchanged), so only the first b
  components take part in the forward pass and receive gradient.
* HetLoRA (``plan.tail_penalty``): :func:`tail_norm` is the self-pruning regularizer the
  training loop adds to its loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from fedlora_client._errors import PlanError
from fedlora_client.protocol import PEFT_PREFIX, LoraSpec, TrainingPlan, lora_a_key, lora_b_key

TRAINED = "default"
PRIVATE = "private"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def _lora_config(spec: LoraSpec, modules: list[str], head: list[str] | None) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,  # type: ignore[arg-type]  # PEFT annotates int
        use_rslora=spec.use_rslora,
        lora_dropout=spec.dropout,
        target_modules=modules,
        modules_to_save=head or None,
    )


def head_modules(plan: TrainingPlan) -> list[str]:
    """Module names of ``plan.model.extra_trainable`` (``base_model.model.classifier.weight``)."""
    names = {key.removeprefix(PEFT_PREFIX).rsplit(".", 1)[0] for key in plan.model.extra_trainable}
    return sorted(names)


def saved_key(parameter_name: str, adapter: str) -> str | None:
    """PEFT saved key of a live parameter of ``adapter``, or None if it belongs to another."""
    for infix in (f".modules_to_save.{adapter}.", f".{adapter}."):
        if infix in parameter_name:
            return parameter_name.replace(infix, ".", 1)
    return None


def adapter_parameters(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``adapter`` by PEFT saved key."""
    found: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        key = saved_key(name, adapter)
        if key is not None and ("lora_" in name or "modules_to_save" in name):
            found[key] = param
    return found


def adapter_tensors(model: nn.Module, adapter: str = TRAINED) -> dict[str, torch.Tensor]:
    """Detached float32 CPU copies of ``adapter``'s tensors, by PEFT saved key."""
    return {
        k: p.detach().float().cpu().clone() for k, p in adapter_parameters(model, adapter).items()
    }


def _fit_start(key: str, tensor: torch.Tensor, shape: tuple[int, ...], b_factor: float) -> Any:
    if key.endswith(".lora_A.weight") and tensor.shape[0] >= shape[0]:
        tensor = tensor[: shape[0], :]
    elif key.endswith(".lora_B.weight") and tensor.shape[1] >= shape[1]:
        tensor = tensor[:, : shape[1]] * b_factor
    if tuple(tensor.shape) != shape:
        raise PlanError(f"start tensor {key!r} has shape {tuple(tensor.shape)}, plan needs {shape}")
    return tensor


def load_into(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    adapter: str,
    expected: Mapping[str, tuple[int, ...]],
    *,
    b_factor: float = 1.0,
) -> None:
    """Copy saved-key ``tensors`` into ``adapter``'s parameters, checking names and shapes."""
    params = adapter_parameters(model, adapter)
    if set(params) != set(expected):
        raise PlanError(
            f"model adapter keys differ from the plan: {sorted(set(params) ^ set(expected))[:4]}"
        )
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise PlanError(f"start artifact lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    with torch.no_grad():
        for key, shape in expected.items():
            value = _fit_start(key, tensors[key].float(), tuple(shape), b_factor)
            params[key].copy_(value.to(params[key].dtype))


def merge_into_base(
    base: nn.Module, plan: TrainingPlan, tensors: Mapping[str, torch.Tensor]
) -> Any:
    """FLoRA: add the merge adapter's ``s B A`` to the base weights (PEFT ``merge_and_unload``)."""
    from peft import get_peft_model

    assert plan.merge is not None
    lora = {k: v for k, v in tensors.items() if k.endswith(_LORA_SUFFIXES)}
    modules = list(plan.model.modules)
    merge_model = get_peft_model(base, _lora_config(plan.merge.lora, modules, None), "merge")
    shapes = {k: tuple(v.shape) for k, v in lora.items()}
    load_into(merge_model, lora, "merge", shapes)
    return merge_model.merge_and_unload()


def build_peft_model(
    base: nn.Module,
    plan: TrainingPlan,
    start: Mapping[str, torch.Tensor],
    *,
    merge: Mapping[str, torch.Tensor] | None = None,
    private: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    """The PeftModel the plan trains, initialised from ``start`` (see module docstring)."""
    from peft import get_peft_model

    if plan.merge is not None:
        if merge is None:
            raise PlanError("the plan asks for a FLoRA merge but no merge adapter was given")
        base = merge_into_base(base, plan, merge)
    modules = list(plan.model.modules)
    model = get_peft_model(base, _lora_config(plan.lora, modules, head_modules(plan)), TRAINED)
    factor = plan.start.lora.scaling / plan.lora.scaling
    load_into(model, start, TRAINED, plan.upload_shapes(), b_factor=factor)
    if plan.private is not None:
        model.add_adapter(PRIVATE, _lora_config(plan.private.lora, modules, None))
        r = plan.private.lora.rank
        shapes: dict[str, tuple[int, ...]] = {}
        for module, (d_out, d_in) in plan.model.modules.items():
            shapes[f"{PEFT_PREFIX}{module}.lora_A.weight"] = (r, d_in)
            shapes[f"{PEFT_PREFIX}{module}.lora_B.weight"] = (d_out, r)
        if private is not None and {k: tuple(v.shape) for k, v in private.items()} == shapes:
            load_into(model, private, PRIVATE, shapes)
        model.base_model.set_adapter([TRAINED, PRIVATE])
    return model


class NestedTruncation:
    """PreLort: keep only the first ``b`` rank components of the trained LoRA in the forward."""

    def __init__(self, model: nn.Module, rank: int) -> None:
        self.mask = torch.ones(rank)
        self._handles = []
        for name, module in model.named_modules():
            if name.endswith(f"lora_B.{TRAINED}"):
                self._handles.append(module.register_forward_pre_hook(self._hook))

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x * self.mask.to(device=x.device, dtype=x.dtype), *args[1:])

    def set_level(self, b: int) -> None:
        self.mask = torch.zeros_like(self.mask)
        self.mask[:b] = 1.0

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def tail_norm(
    params: Mapping[str, torch.Tensor], modules: Iterable[str], keep: int
) -> torch.Tensor:
    """HetLoRA's ``sum_modules ||B[:, keep:]||_F ||A[keep:, :]||_F`` (differentiable, float32).

    ``params`` maps PEFT saved keys to the trained LoRA's parameters (or an upload's tensors:
    the server's pruning rule measures the same quantity with this function). A zero tail (B
    starts at zero) has a zero gradient: the norm's subgradient at 0 is taken as 0.
    """
    total: torch.Tensor | None = None
    for module in modules:
        B, A = params[lora_b_key(module)], params[lora_a_key(module)]
        term = torch.linalg.vector_norm(B[:, keep:], dtype=torch.float32) * (
            torch.linalg.vector_norm(A[keep:, :], dtype=torch.float32)
        )
        total = term if total is None else total + term
    if total is None:
        raise PlanError("tail_norm: the plan names no adapted modules")
    return total
