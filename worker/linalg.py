"""Numeric kernels of the aggregation engine: pure functions on tensors (METHODS.md §6).

Shapes follow METHODS.md §1: ``B`` is ``(..., m, r)`` and ``A`` is ``(..., r, d)``, with
``m = d_out`` and ``d = d_in``. Every function accepts leading batch dimensions, so layers of
identical shape are processed in one call (``torch.linalg.qr`` and ``torch.linalg.svd`` are
batched). Shapes are checked before any arithmetic; a mismatch raises :class:`ShapeMismatchError`.

Precision: inputs in half precision are promoted to float32 (float64 inputs stay float64, which
the tests use); sums accumulate in that working dtype; the small ``R x R`` core SVD of the
factored route always runs in float64.

The factored SVD (:func:`factored_svd`) computes the SVD of ``Bc @ Ac`` (a weighted sum of
products, stacked as in §6.1) from two thin QRs and an ``R x R`` core SVD, never forming the
``m x d`` matrix. :func:`dense_svd` is the dense reference route for tests and the benchmark;
the factored route itself falls back to it only when ``R >= min(m, d)``, where QR saves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from worker.strategies.errors import ShapeMismatchError

__all__ = [
    "FactoredSVD",
    "dense_svd",
    "factored_svd",
    "frobenius_norm_product",
    "matrix_svd",
    "pad_rank",
    "padded_weighted_sum",
    "resolve_device",
    "segment_average",
    "stack_factors",
    "weighted_sum",
    "work_dtype",
]


def resolve_device(setting: str = "auto") -> torch.device:
    """The aggregation device for the worker setting ``auto`` | ``cpu`` | ``cuda``."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device setting {setting!r} but no CUDA device is available")
    return torch.device(setting)


def work_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (the accumulation dtype)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_pair(B: Tensor, A: Tensor, what: str = "factors") -> tuple[int, int, int]:
    if B.ndim < 2 or A.ndim < 2:
        raise ShapeMismatchError(f"{what}: B and A need at least 2 dims, got {B.shape}, {A.shape}")
    if B.shape[:-2] != A.shape[:-2] or B.shape[-1] != A.shape[-2]:
        raise ShapeMismatchError(
            f"{what}: B {tuple(B.shape)} and A {tuple(A.shape)} do not chain (B: (..., m, r), "
            "A: (..., r, d) with equal batch dims)"
        )
    return B.shape[-2], B.shape[-1], A.shape[-1]


def frobenius_norm_product(B: Tensor, A: Tensor) -> Tensor:
    """``||B @ A||_F`` per batch element via ``trace((B^T B)(A A^T))``, cost O((m + d) r^2)."""
    _check_pair(B, A)
    dt = work_dtype(B, A)
    Bw, Aw = B.to(dt), A.to(dt)
    gram_b = Bw.transpose(-1, -2) @ Bw
    gram_a = Aw @ Aw.transpose(-1, -2)
    # both Gram matrices are symmetric, so trace(G_B G_A) is their elementwise inner product
    return (gram_b * gram_a).sum(dim=(-1, -2)).clamp_min(0.0).sqrt()


def pad_rank(B: Tensor, A: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Zero-pad (or truncate) ``B``'s columns and ``A``'s rows to ``rank``."""
    _check_pair(B, A)
    r = B.shape[-1]
    if rank <= r:
        return B[..., :rank], A[..., :rank, :]
    Bp = B.new_zeros((*B.shape[:-1], rank))
    Ap = A.new_zeros((*A.shape[:-2], rank, A.shape[-1]))
    Bp[..., :r] = B
    Ap[..., :r, :] = A
    return Bp, Ap


def stack_factors(
    Bs: Sequence[Tensor], As: Sequence[Tensor], coeffs: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """``Bc = [c_1 B_1, ..., c_K B_K]``, ``Ac = [A_1; ...; A_K]``: ``Bc Ac = sum c_i B_i A_i``."""
    if not (len(Bs) == len(As) == len(coeffs)) or not Bs:
        raise ShapeMismatchError("stack_factors needs equally many (>= 1) B, A and coefficients")
    m, _, d = _check_pair(Bs[0], As[0])
    for B, A in zip(Bs, As, strict=True):
        if _check_pair(B, A)[::2] != (m, d) or B.shape[:-2] != Bs[0].shape[:-2]:
            raise ShapeMismatchError(
                f"stack_factors: {tuple(B.shape)}, {tuple(A.shape)} vs m={m}, d={d}"
            )
    dt = work_dtype(*Bs, *As)
    Bc = torch.cat([B.to(dt) * c for B, c in zip(Bs, coeffs, strict=True)], dim=-1)
    Ac = torch.cat([A.to(dt) for A in As], dim=-2)
    return Bc, Ac


@dataclass(frozen=True)
class FactoredSVD:
    """Thin SVD ``U diag(S[:k]) Vh`` of a product: ``U (..., m, k)``, ``Vh (..., k, d)``.

    ``S`` holds every singular value computed (length ``min(R, m, d)``), sorted descending, so
    the discarded tail energy of a truncation is known without the dense matrix.
    """

    U: Tensor
    S: Tensor
    Vh: Tensor

    @property
    def rank(self) -> int:
        return self.U.shape[-1]

    def tail_ratio(self, rank: int) -> Tensor:
        """Relative Frobenius error ``sqrt(sum_{j >= rank} S_j^2 / sum_j S_j^2)`` of truncation."""
        energy = (self.S.double() ** 2).sum(-1)
        tail = (self.S[..., rank:].double() ** 2).sum(-1)
        return (tail / energy.clamp_min(torch.finfo(torch.float64).tiny)).sqrt()

    def factors(
        self, rank: int, scaling: float, split: Literal["b", "balanced"] = "b"
    ) -> tuple[Tensor, Tensor]:
        """``(B, A)`` of rank ``rank`` with ``scaling * B @ A`` = the rank-``rank`` truncation.

        ``split='b'`` puts all of Sigma into B (FlexLoRA); ``'balanced'`` puts Sigma^1/2 on each
        side (SDFLoRA). Components beyond :attr:`rank` are zero-padded.
        """
        k = min(rank, self.rank)
        U, S, Vh = self.U[..., :k], self.S[..., :k].to(self.U.dtype), self.Vh[..., :k, :]
        if split == "b":
            B, A = U * (S / scaling).unsqueeze(-2), Vh
        else:
            root = (S / scaling).sqrt()
            B, A = U * root.unsqueeze(-2), Vh * root.unsqueeze(-1)
        return pad_rank(B.contiguous(), A.contiguous(), rank)


def dense_svd(Bc: Tensor, Ac: Tensor, rank: int | None = None) -> FactoredSVD:
    """Reference route: form ``W = Bc @ Ac`` (m x d) and take its thin SVD. Tests/bench only."""
    _check_pair(Bc, Ac, "dense_svd")
    dt = work_dtype(Bc, Ac)
    return matrix_svd(Bc.to(dt) @ Ac.to(dt), rank)


def matrix_svd(W: Tensor, rank: int | None = None) -> FactoredSVD:
    """Thin SVD of a dense ``(..., m, d)`` matrix, keeping ``rank`` singular vectors."""
    m, d = W.shape[-2:]
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    k = min(rank if rank is not None else min(m, d), m, d)
    return FactoredSVD(U[..., :k], S, Vh[..., :k, :])


def _pad_rows(X: Tensor, rows: int) -> Tensor:
    """``X`` (..., R, k) zero-padded to (..., rows, k)."""
    out = X.new_zeros((*X.shape[:-2], rows, X.shape[-1]))
    out[..., : X.shape[-2], :] = X
    return out


def factored_svd(Bc: Tensor, Ac: Tensor, rank: int | None = None) -> FactoredSVD:
    """SVD of ``Bc @ Ac`` without forming it: QRs of both factors + float64 core SVD.

    ``Bc = Q_B R_B`` and ``Ac^T = Q_A R_A`` (Householder, ``geqrf``); the core
    ``R_B R_A^T = U_M Sigma V_M^T`` (R x R, float64); then ``U = Q_B U_M[:, :k]`` and
    ``V = Q_A V_M[:, :k]``, applying the Householder reflectors to the k kept vectors only
    (``ormqr``) instead of forming ``Q_B`` and ``Q_A``.

    Cost ``O((m + d) R^2 + R^3)`` time and ``O((m + d) R)`` memory. ``rank`` (default: all
    ``R``) bounds the singular vectors kept. Falls back to :func:`dense_svd` when
    ``R >= min(m, d)``.
    """
    m, R, d = _check_pair(Bc, Ac, "factored_svd")
    if min(m, d) <= R:
        return dense_svd(Bc, Ac, rank)
    dt = work_dtype(Bc, Ac)
    # Householder QR without forming Q (geqrf); Q is applied to the k kept vectors only (ormqr).
    hb, tau_b = torch.geqrf(Bc.to(dt))  # R_B in the upper triangle of hb[..., :R, :]
    ha, tau_a = torch.geqrf(Ac.to(dt).transpose(-1, -2))  # column-major view: no copy
    RB, RA = hb[..., :R, :].triu(), ha[..., :R, :].triu()
    core = RB.double() @ RA.double().transpose(-1, -2)
    Um, S, Vmh = torch.linalg.svd(core, full_matrices=False)
    k = R if rank is None else min(rank, R)
    U = torch.ormqr(hb, tau_b, _pad_rows(Um[..., :k].to(dt), m))
    V = torch.ormqr(ha, tau_a, _pad_rows(Vmh[..., :k, :].transpose(-1, -2).to(dt), d))
    return FactoredSVD(U, S.to(dt), V.transpose(-1, -2).contiguous())


def _check_rank_stack(tensors: Sequence[Tensor], rank: int, rank_dim: int, what: str) -> None:
    if not tensors:
        raise ShapeMismatchError(f"{what}: no tensors")
    ref = list(tensors[0].shape)
    rank_dim %= len(ref)
    for t in tensors:
        shape = list(t.shape)
        if len(shape) != len(ref) or shape[rank_dim] > rank:
            raise ShapeMismatchError(f"{what}: {tuple(t.shape)} does not fit rank {rank}")
        if shape[:rank_dim] + shape[rank_dim + 1 :] != ref[:rank_dim] + ref[rank_dim + 1 :]:
            raise ShapeMismatchError(f"{what}: {tuple(t.shape)} vs {tuple(tensors[0].shape)}")


def _rank_slice(t: Tensor, stop: int, rank_dim: int) -> tuple[slice, ...]:
    index = [slice(None)] * t.ndim
    index[rank_dim] = slice(0, stop)
    return tuple(index)


def padded_weighted_sum(
    tensors: Sequence[Tensor], weights: Sequence[float], rank: int, *, rank_dim: int
) -> Tensor:
    """``sum_i w_i pad(X_i)``: zero-pad each tensor along ``rank_dim`` to ``rank`` (HetLoRA).

    Use ``rank_dim=-1`` for B factors and ``rank_dim=-2`` for A factors.
    """
    _check_rank_stack(tensors, rank, rank_dim, "padded_weighted_sum")
    if len(weights) != len(tensors):
        raise ShapeMismatchError("padded_weighted_sum: one weight per tensor")
    shape = list(tensors[0].shape)
    shape[rank_dim] = rank
    out = torch.zeros(shape, dtype=work_dtype(*tensors), device=tensors[0].device)
    for t, w in zip(tensors, weights, strict=True):
        out[_rank_slice(out, t.shape[rank_dim], rank_dim)].add_(t, alpha=float(w))
    return out


def segment_average(
    tensors: Sequence[Tensor],
    weights: Sequence[float],
    previous: Tensor,
    *,
    rank_dim: int,
) -> Tensor:
    """Per-index weighted mean over the covering clients (PreLort segment-wise rule).

    Index ``j`` along ``rank_dim`` becomes ``sum_{i: r_i > j} w_i X_i[j] / sum_{i: r_i > j} w_i``;
    indices no tensor covers keep their value in ``previous`` (whose shape fixes the rank).
    """
    rank = previous.shape[rank_dim]
    _check_rank_stack([previous, *tensors], rank, rank_dim, "segment_average")
    total = padded_weighted_sum(tensors, weights, rank, rank_dim=rank_dim)
    cover = torch.zeros(rank, dtype=torch.float64)
    for t, w in zip(tensors, weights, strict=True):
        cover[: t.shape[rank_dim]] += float(w)
    covered = cover > 0
    view = [1] * total.ndim
    view[rank_dim] = rank
    # in place: one pass over the result (no temporaries of its size); the fallback to
    # ``previous`` costs a second pass only when some index is not covered
    inverse = torch.where(covered, 1.0 / torch.where(covered, cover, 1.0), 0.0)
    total.mul_(inverse.to(device=total.device, dtype=total.dtype).view(view))
    if bool(covered.all()):
        return total
    mask = covered.to(total.device).view(view)
    return torch.where(mask, total, previous.to(total))


def weighted_sum(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_i w_i X_i`` of equally shaped tensors, accumulated in the working dtype."""
    if not tensors or len(weights) != len(tensors):
        raise ShapeMismatchError("weighted_sum: need one weight per tensor and >= 1 tensor")
    for t in tensors:
        if t.shape != tensors[0].shape:
            raise ShapeMismatchError(f"weighted_sum: {tuple(t.shape)} vs {tuple(tensors[0].shape)}")
    out = torch.zeros_like(tensors[0], dtype=work_dtype(*tensors))
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t, alpha=float(w))
    return out
