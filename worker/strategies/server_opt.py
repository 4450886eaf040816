"""A server optimizer around any strategy (FedOpt: FedAvgM, FedAdam, FedYogi).

:class:`ServerOptimized` wraps a strategy: ``plan`` and validation are the strategy's own; after
the strategy's ``aggregate`` proposes a new global model, the optimizer takes its change from
the previous global model as the (negative) pseudo-gradient and publishes
``old + lr * step``, keeping its buffers in the server state under ``server_opt.*``
(safetensors, like every state). See :class:`worker.strategies.params.ServerOptimizerParams`
for the rules and which strategies take which optimizer.

* **Factor space** (FedAvg, HetLoRA, PreLort, FSLoRA): every published tensor (factors at the
  global rank, heads) is a parameter; momentum / Adam / Yogi act element-wise.
* **Product space** (FlexLoRA, SDFLoRA): their factors come from a fresh SVD each round, so
  the optimizer acts on the product ``W = s B A``. The momentum buffer is kept factored,
  ``M = B_M A_M`` of rank at most ``2G``: ``M <- trunc_{2G}(beta M + W_new - W_old)`` and the
  published update is ``trunc_G(W_old + lr M)``, both by the factored SVD of a stack of
  factors (no ``m x d`` matrix). With ``beta = 0`` and ``lr = 1`` this is the strategy itself.
  Heads are element-wise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedlora_client.protocol import LoraSpec, lora_a_key, lora_b_key, scheduled_rate
from worker.linalg import factored_svd
from worker.strategies.adapters import generator
from worker.strategies.base import (
    AggregationResult,
    ClientAssignment,
    ClientUpdate,
    Participant,
    PlanContext,
    ServerState,
    Strategy,
)
from worker.strategies.common import refill_dead_components, shape_groups, to_cpu
from worker.strategies.flexlora import stack_group
from worker.strategies.global_lora import GlobalLoRAStrategy
from worker.strategies.params import PRODUCT_SPACE_STRATEGIES, ServerOptimizerParams

PREFIX = "server_opt."
"""State keys of the optimizer's buffers (never published)."""


class ServerOptimized(Strategy):
    """``inner`` with a server optimizer on the change of its global model."""

    def __init__(self, inner: Strategy, optimizer: ServerOptimizerParams) -> None:
        optimizer.check_strategy(inner.name)
        if not isinstance(inner, GlobalLoRAStrategy):
            raise ValueError(f"{inner.name}: no global LoRA to optimise")
        self.inner = inner
        self.opt = optimizer
        self.name = inner.name  # type: ignore[misc]
        self.params_model = inner.params_model  # type: ignore[misc]
        self.params = inner.params
        self.device = inner.device

    # ------------------------------------------------------------------ the strategy's own

    def init_state(self, ctx: PlanContext) -> ServerState:
        return self.inner.init_state(ctx)

    def plan(self, state: ServerState, ctx: PlanContext) -> dict[str, ClientAssignment]:
        return self.inner.plan(state, ctx)

    def client_lora(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> LoraSpec:
        return self.inner.client_lora(state, ctx, participant)

    def expected_upload(
        self, state: ServerState, ctx: PlanContext, participant: Participant
    ) -> dict[str, tuple[int, ...]]:
        return self.inner.expected_upload(state, ctx, participant)

    def validate_updates(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> None:
        self.inner.validate_updates(state, ctx, updates)

    # ------------------------------------------------------------------ the optimizer

    def _aggregate(
        self, state: ServerState, ctx: PlanContext, updates: Sequence[ClientUpdate]
    ) -> AggregationResult:
        proposed = self.inner._aggregate(state, ctx, updates)
        if self.opt.name == "none":
            return proposed
        step = int(state.meta.get("server_opt_step", 0)) + 1
        lr = scheduled_rate(
            self.opt.lr,
            self.opt.lr_schedule,
            round_number=ctx.round_number,
            total_rounds=max(1, ctx.total_rounds),
            warmup_rounds=self.opt.warmup_rounds,
        )
        buffers: dict[str, Tensor] = {}
        published = dict(proposed.adapter)
        factor_keys = {k for m in ctx.model.modules for k in (lora_a_key(m), lora_b_key(m))}
        if self.inner.name in PRODUCT_SPACE_STRATEGIES:
            published |= self._product_momentum(state, ctx, proposed, buffers, lr)
            elementwise = [k for k in proposed.adapter if k not in factor_keys]
        else:
            elementwise = list(proposed.adapter)
        for key in elementwise:
            new = proposed.adapter[key]
            published[key] = self._elementwise(key, state, new, step, lr, buffers)
        adapter = to_cpu(published)
        inner_state = proposed.state.tensors
        kept = {k: v for k, v in inner_state.items() if k not in adapter and k not in buffers}
        meta = proposed.state.meta | {"server_opt_step": step, "server_opt": self.opt.name}
        return AggregationResult(
            state=ServerState(tensors=adapter | kept | to_cpu(buffers), meta=meta),
            adapter=adapter,
            lora=proposed.lora,
            metrics=proposed.metrics,
        )

    def _elementwise(
        self,
        key: str,
        state: ServerState,
        new: Tensor,
        step: int,
        lr: float,
        out: dict[str, Tensor],
    ) -> Tensor:
        """Momentum, Adam or Yogi on one tensor; its buffers go to ``out``."""
        o, dev = self.opt, self.device
        old = state.tensors[key].to(dev, torch.float32)
        delta = new.to(dev, torch.float32) - old

        def buffer(slot: str) -> Tensor:
            saved = state.tensors.get(f"{PREFIX}{slot}.{key}")
            return torch.zeros_like(old) if saved is None else saved.to(dev, torch.float32)

        if o.name == "momentum":
            m = buffer("m").mul_(o.momentum).add_(delta)
            out[f"{PREFIX}m.{key}"] = m
            return old + lr * m
        m = buffer("m").mul_(o.momentum).add_(delta, alpha=1.0 - o.momentum)
        square = delta.square()
        v = buffer("v")
        if o.name == "adam":
            v.mul_(o.beta2).add_(square, alpha=1.0 - o.beta2)
        else:  # yogi: v <- v - (1 - beta2) delta^2 sign(v - delta^2)
            v.sub_((1.0 - o.beta2) * square * torch.sign(v - square))
        out[f"{PREFIX}m.{key}"], out[f"{PREFIX}v.{key}"] = m, v
        # bias-corrected moments (Kingma & Ba): round 1 moves each parameter by lr * sign,
        # like a first Adam step, whatever the scale of the clients' changes
        m_hat = m / (1.0 - o.momentum**step)
        v_hat = (v / (1.0 - o.beta2**step)).clamp_min(0.0)
        return old + lr * m_hat / (v_hat.sqrt() + o.tau)

    def _product_momentum(
        self,
        state: ServerState,
        ctx: PlanContext,
        proposed: AggregationResult,
        out: dict[str, Tensor],
        lr: float,
    ) -> dict[str, Tensor]:
        """FedAvgM on ``W = s B A`` with a factored buffer (see the module docstring)."""
        assert isinstance(self.inner, GlobalLoRAStrategy)
        o, rank = self.opt, self.inner.state_rank(ctx)
        s_g, cap = ctx.scaling(rank), 2 * rank
        split = self.inner.start_split
        published: dict[str, Tensor] = {}
        buffer: dict[str, Tensor] = {}  # rank 0 before the first step
        for module in ctx.model.modules:
            ka, kb = lora_a_key(module), lora_b_key(module)
            buffer[ka] = state.tensors.get(f"{PREFIX}m.{ka}", proposed.adapter[ka][:0])
            buffer[kb] = state.tensors.get(f"{PREFIX}m.{kb}", proposed.adapter[kb][:, :0])
        for modules in shape_groups(ctx.model).values():
            blocks = [(o.momentum, buffer), (s_g, proposed.adapter), (-s_g, state.tensors)]
            Bc, Ac = stack_group(modules, blocks, self.device)
            M_B, M_A = factored_svd(Bc, Ac, cap).factors(cap, 1.0, "balanced")
            momentum = {}
            for layer, module in enumerate(modules):
                momentum[lora_b_key(module)], momentum[lora_a_key(module)] = M_B[layer], M_A[layer]
            Bc, Ac = stack_group(modules, [(s_g, state.tensors), (lr, momentum)], self.device)
            B, A = factored_svd(Bc, Ac, rank).factors(rank, s_g, split)
            gen = generator(ctx.federation_id, ctx.seed, "server_opt", ctx.round_number, modules[0])
            B, A = refill_dead_components(B, A, gen)
            for layer, module in enumerate(modules):
                published[lora_b_key(module)], published[lora_a_key(module)] = B[layer], A[layer]
                for key in (lora_a_key(module), lora_b_key(module)):
                    out[f"{PREFIX}m.{key}"] = momentum[key]
        return published


def with_server_optimizer(
    strategy: Strategy, optimizer: ServerOptimizerParams | dict[str, object] | None
) -> Strategy:
    """``strategy`` itself when the optimizer is absent or ``none``, else it wrapped."""
    params = (
        optimizer
        if isinstance(optimizer, ServerOptimizerParams)
        else ServerOptimizerParams.model_validate(optimizer or {})
    )
    if params.name == "none":
        return strategy
    return ServerOptimized(strategy, params)
