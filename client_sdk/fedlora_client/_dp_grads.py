"""Per-example gradients of the DP-trained ``nn.Linear`` layers (LoRA factors, heads).

:class:`LinearGradSampler` is what DP-SGD's clipping reads (see ``_privacy.DPSGD``): after a
backward pass of ``sum(per_example_losses)`` every DP-trained parameter holds
``param.grad_sample``, its gradient for each example of the pass (leading batch dimension), in
float32 on the parameter's device. It is the book-keeping of Bu et al. ("Differentially Private
Optimization on Large Model at Small Cost", ICML 2023) for LoRA: a forward hook keeps each
layer's input ``a`` (a reference, not a copy: autograd keeps it anyway for the weight
gradient), a hook on the layer's output receives its gradient ``g`` during the one ordinary
backward pass, and the per-example gradient is one batched matmul, ``G_i = g_i^T a_i`` (summed
over tokens), after which ``a`` is released. No second backward pass, no per-module backward
hooks on the frozen backbone, nothing copied to the host.

Why materialized per-example gradients and not ghost norms: a LoRA factor has ``r x d``
entries, so ``G`` costs ``B T r d`` multiply-adds, exactly what autograd already spends on the
summed weight gradient, and ``B r d`` floats; the ghost norm ``sum_{t,t'} (a_t.a_t')(g_t.g_t')``
costs ``B T^2 (d + r)``, cheaper only for ``2 T^2 < r d`` (under 55 tokens at r=16, d=384), and
needs ``a`` and ``g`` kept until every layer's norm is known, and then the weighted sum
``sum_i c_i g_i^T a_i`` again. For LoRA both are about 1% of a step; materializing is simpler
and keeps less memory.

Why not Opacus (the library the project uses for this): its ``GradSampleModule`` wraps the
whole model with full backward hooks and computes per-example gradients in the layer's dtype
(bfloat16 per-example gradients lose the precision clipping needs), and its fast gradient
clipping (``GradSampleModuleFastGradientClipping``) runs a second backward pass per batch, which
on a frozen backbone costs about as much as the first, and it clips per physical batch through
its own optimizer rather than accumulating clipped sums across micro-batches for one noise
draw. A hook per LoRA layer is all that is needed here.

Assumes every hooked layer sees the batch in its first dimension (``batch_first``), as every
Hugging Face model does for its linear layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fedlora_client._errors import PrivacyError


def _per_example(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``G[b] = sum_t g[b, t]^T a[b, t]`` in float32: shape ``(B, d_out, d_in)``."""
    batch = g.shape[0]
    g3 = g.reshape(batch, -1, g.shape[-1]).float()
    a3 = a.reshape(batch, -1, a.shape[-1]).float()
    return torch.bmm(g3.transpose(1, 2), a3)


def _add_sample(param: torch.Tensor, sample: torch.Tensor) -> None:
    """Store (or add to, for a layer called twice in one pass) ``param.grad_sample``."""
    current: torch.Tensor | None = getattr(param, "grad_sample", None)
    if current is None or current.shape != sample.shape:
        param.grad_sample = sample  # type: ignore[attr-defined]
    else:
        current.add_(sample)


class LinearGradSampler:
    """Hooks that leave ``param.grad_sample`` on each of ``params`` after every backward pass.

    ``params`` (default: every trainable parameter of ``model``, as Opacus' ``GradSampleModule``)
    must all be the weight or bias of ``nn.Linear`` layers of ``model`` (LoRA A and B factors,
    classification heads); anything else raises :class:`PrivacyError` naming it.
    The loss must be the *sum* of per-example losses (a mean would scale every example's
    gradient by ``1 / B``). Passes under ``torch.no_grad()`` or in eval mode record nothing.
    Call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter] | None = None) -> None:
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        wanted = {id(p) for p in params}
        found: set[int] = set()
        self._handles: list[RemovableHandle] = []
        for module in model.modules():
            if not isinstance(module, nn.Linear):
                continue
            mine = [p for p in (module.weight, module.bias) if p is not None and id(p) in wanted]
            if mine:
                found.update(id(p) for p in mine)
                self._handles.append(module.register_forward_hook(self._capture))
        names = {id(p): n for n, p in model.named_parameters()}
        missing = [names.get(id(p), f"tensor of shape {tuple(p.shape)}")
                   for p in params if id(p) not in found]  # fmt: skip
        if missing:
            self.close()
            raise PrivacyError(
                f"sample-level DP computes per-example gradients of nn.Linear layers only (LoRA "
                f"factors and linear heads); {missing[0]!r} is not one. Train only LoRA factors "
                "and a linear head, or use client-level DP"
            )

    def _capture(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor)):
            return
        if not output.requires_grad:
            return
        assert isinstance(module, nn.Linear)
        activations = args[0].detach()

        def on_grad(grad: torch.Tensor) -> None:
            if module.weight.requires_grad:
                _add_sample(module.weight, _per_example(grad, activations))
            if module.bias is not None and module.bias.requires_grad:
                flat = grad.reshape(grad.shape[0], -1, grad.shape[-1])
                _add_sample(module.bias, flat.float().sum(1))

        output.register_hook(on_grad)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the hooks (``grad_sample`` attributes are left to their reader)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
