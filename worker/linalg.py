"""Numeric kernels of the aggregation engine: pure functions on tensors (docs/methods.md,
"Factored SVD").

Shapes follow docs/methods.md, "Conventions": ``B`` is ``(..., m, r)`` and ``A`` is
``(..., r, d)``, with ``m = d_out`` and ``d = d_in``. Every function accepts leading batch
dimensions, so layers of identical shape are processed in one call (``torch.linalg.qr`` and
``torch.linalg.svd`` are batched). Shapes are checked before any arithmetic; a mismatch raises
:class:`ShapeMismatchError`.

Precision: inputs in half precision are promoted to float32 (float64 inputs stay float64, which
the tests use); sums accumulate in that working dtype; the small ``R x R`` core SVD of the
factored route always runs in float64.

The factored SVD (:func:`factored_svd`) computes the SVD of ``Bc @ Ac`` (a weighted sum of
products, stacked as in §6.1) from two thin QRs and the top-k SVD of an ``R x R`` float64
core, never forming the ``m x d`` matrix. :func:`dense_svd` is the dense reference route for
tests and the benchmark; the factored route itself falls back to it only when
``R >= min(m, d)``, where QR saves nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import torch
from torch import Tensor

from worker.strategies.errors import ShapeMismatchError

__all__ = [
    "FactoredSVD",
    "core_and_gram",
    "dense_svd",
    "factored_svd",
    "frobenius_norm_product",
    "matrix_svd",
    "pad_rank",
    "padded_weighted_sum",
    "r_factor",
    "resolve_device",
    "segment_average",
    "stack_factors",
    "top_eigenvectors",
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
    """Truncated thin SVD ``U diag(S) Vh`` of a product ``W``: the top ``k`` singular triplets.

    ``U (..., m, k)``, ``S (..., k)`` (descending), ``Vh (..., k, d)``, and ``energy (...,)``
    = ``||W||_F^2`` in float64, so the discarded tail of a truncation is known without the
    dense matrix or the singular values that were not computed.
    """

    U: Tensor
    S: Tensor
    Vh: Tensor
    energy: Tensor

    @property
    def rank(self) -> int:
        return self.U.shape[-1]

    def tail_ratio(self, rank: int) -> Tensor:
        """Relative Frobenius error ``sqrt(sum_{j >= rank} S_j^2 / sum_j S_j^2)`` of truncation.

        A ``rank`` beyond the computed triplets keeps all of them (0 when they are all of W's,
        e.g. a stacked rank R below the requested rank).
        """
        kept = (self.S[..., :rank].double() ** 2).sum(-1)
        tail = (self.energy - kept).clamp_min(0.0)
        return (tail / self.energy.clamp_min(torch.finfo(torch.float64).tiny)).sqrt()

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
    """Thin SVD of a dense ``(..., m, d)`` matrix, keeping ``rank`` singular triplets."""
    m, d = W.shape[-2:]
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    k = min(rank if rank is not None else min(m, d), m, d)
    energy = (S.double() ** 2).sum(-1)
    return FactoredSVD(U[..., :k], S[..., :k], Vh[..., :k, :], energy)


def _orthonormal(X: Tensor) -> tuple[Tensor, Tensor]:
    """Thin QR of ``X`` with the signs fixed so that ``diag(R) >= 0``: ``(Q, diag(R))``.

    Columns of ``X`` that are (nearly) orthogonal come back normalised; zero columns come back
    as orthonormal completions (Householder QR always returns orthonormal columns).
    """
    Q, R = torch.linalg.qr(X)
    diag = torch.diagonal(R, dim1=-2, dim2=-1)
    return Q * torch.where(diag < 0, -1.0, 1.0).to(Q.dtype).unsqueeze(-2), diag.abs()


def _batches(X: Tensor) -> Tensor:
    """``X (..., a, b)`` as ``(n, a, b)`` (a view for the stacked layouts used here)."""
    return X.reshape(-1, *X.shape[-2:])


def r_factor(X: Tensor) -> Tensor:
    """The ``R x R`` triangle of the Householder QR of ``X (..., n, R)``, in float64.

    LAPACK's ``geqrf`` runs one layer at a time: a batched call factors the same matrices but
    writes every layer's copy into one fresh buffer first, which measured 66 ms per
    4096 x 620 layer against 55 ms for the loop (one thread, fresh memory each round).
    """
    R = X.shape[-1]
    flat = _batches(X)
    # column-major, like geqrf's output: the copy of each triangle reads and writes in order
    out = torch.empty(flat.shape[0], R, R, dtype=torch.float64, device=X.device).mT
    for i, x in enumerate(flat):
        out[i] = torch.geqrf(x)[0][:R]
    return out.triu_().reshape(*X.shape[:-2], R, R)


Backend = Literal["auto", "lapack", "torch"]
"""``lapack``: SciPy's BLAS/LAPACK on CPU tensors; ``torch``: torch ops on any device (what CUDA
uses); ``auto``: ``lapack`` on the CPU, else ``torch``. Tests run both on the CPU."""


def _use_lapack(t: Tensor, backend: Backend) -> bool:
    return backend == "lapack" or (backend == "auto" and t.device.type == "cpu")


def core_and_gram(RB: Tensor, RA: Tensor, backend: Backend = "auto") -> tuple[Tensor, Tensor]:
    """``M = R_B R_A^T`` and the upper triangle of ``M^T M`` (float64, ``(..., R, R)``).

    On the CPU BLAS's triangular product (``trmm``) and symmetric rank-k update (``syrk``) do
    half the flops of general products (7 ms instead of 14 ms each at R = 620, one thread).
    """
    if not _use_lapack(RB, backend):
        M = RB @ RA.transpose(-1, -2)
        return M, M.transpose(-1, -2) @ M
    rb, ra = _batches(RB).numpy(), _batches(RA).numpy()
    core, gram = np.empty_like(rb), np.empty_like(rb)
    for i in range(rb.shape[0]):
        core[i] = scipy.linalg.blas.dtrmm(1.0, rb[i], ra[i].T, side=0, lower=0)
        gram[i] = scipy.linalg.blas.dsyrk(1.0, core[i], trans=1, lower=0)
    shape = RB.shape
    return torch.from_numpy(core).reshape(shape), torch.from_numpy(gram).reshape(shape)


def top_eigenvectors(G: Tensor, k: int, backend: Backend = "auto") -> Tensor:
    """Eigenvectors of the ``k`` largest eigenvalues of symmetric ``G (..., n, n)``, descending.

    Reads the upper triangle only. On the CPU LAPACK's ``syevr`` (SciPy) computes just those
    ``k`` vectors after the tridiagonal reduction: 31-36 ms at ``n = 620``, ``k = 64`` on one
    thread, against 59 ms for a full ``torch.linalg.eigh`` and 117 ms for the SVD of the core
    it replaces. Elsewhere (CUDA) ``torch.linalg.eigh`` computes all of them.
    """
    n = G.shape[-1]
    if not _use_lapack(G, backend):
        vectors: Tensor = torch.linalg.eigh(G, UPLO="U").eigenvectors
        return vectors[..., -k:].flip(-1)
    flat = _batches(G).numpy()
    out = np.empty((flat.shape[0], n, k), dtype=flat.dtype)
    for i, g in enumerate(flat):
        _, vectors = scipy.linalg.eigh(
            g, lower=False, subset_by_index=[n - k, n - 1], driver="evr", check_finite=False
        )
        out[i] = vectors[:, ::-1]
    return torch.from_numpy(out).reshape(*G.shape[:-2], n, k)


def factored_svd(Bc: Tensor, Ac: Tensor, rank: int | None = None) -> FactoredSVD:
    """Top-``rank`` SVD of ``Bc @ Ac`` without forming it: two QRs and a float64 core.

    1. ``Bc = Q_B R_B`` and ``Ac^T = Q_A R_A`` (Householder, :func:`r_factor`; only the
       ``R x R`` triangles are used, Q is never applied).
    2. Core ``M = R_B R_A^T`` (R x R, float64) and its top-k SVD ``M V_M = U_M Sigma``: V_M are
       the top-k eigenvectors of ``M^T M`` (:func:`top_eigenvectors`), ``U_M`` and ``Sigma``
       the orthonormalised columns of ``M V_M`` and their norms. In float64 the squared
       condition number of the Gram only blurs components below ~1e-8 sigma_1, far under the
       float32 inputs' own rounding.
    3. The singular vectors of ``W`` without Q: ``Q_B U_M = Bc R_A^T V_M Sigma^-1`` and
       ``Q_A V_M = Ac^T R_B^T U_M Sigma^-1`` (from ``M = R_B R_A^T``), two ``(m + d) R k``
       products, each re-orthonormalised by a thin QR of k columns (which also gives
       components with ``sigma ~ 0`` orthonormal vectors instead of amplified rounding).

    Cost ``O((m + d) R^2 + R^3)`` time, ``O((m + d) R)`` memory; at m = d = 4096, R = 620,
    k = 64 the two QRs are about half of the time. ``rank`` (default: all ``R``) is the number
    of triplets computed. Falls back to :func:`dense_svd` when ``R >= min(m, d)``.
    """
    m, R, d = _check_pair(Bc, Ac, "factored_svd")
    if min(m, d) <= R:
        return dense_svd(Bc, Ac, rank)
    dt = work_dtype(Bc, Ac)
    k = R if rank is None else min(rank, R)
    Bw, Aw = Bc.to(dt), Ac.to(dt)
    RB, RA = r_factor(Bw), r_factor(Aw.transpose(-1, -2))  # Ac^T is column-major: no copy
    core, gram = core_and_gram(RB, RA)
    Vm = top_eigenvectors(gram, k)
    Um, sigma = _orthonormal(core @ Vm)
    # 1/sigma only above float rounding of sigma_1; smaller components are noise in dt anyway
    above = sigma > sigma[..., :1] * torch.finfo(dt).eps
    inv = torch.where(above, 1.0 / sigma.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    U, _ = _orthonormal(Bw @ (RA.transpose(-1, -2) @ Vm * inv.unsqueeze(-2)).to(dt))
    V, _ = _orthonormal(
        Aw.transpose(-1, -2) @ (RB.transpose(-1, -2) @ Um * inv.unsqueeze(-2)).to(dt)
    )
    energy = gram.diagonal(dim1=-2, dim2=-1).sum(-1)  # trace(M^T M) = ||M||_F^2 = ||W||_F^2
    return FactoredSVD(U, sigma.to(dt), V.transpose(-1, -2).contiguous(), energy)


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
    scales: Sequence[float] | None = None,
) -> Tensor:
    """Per-index weighted mean over the covering clients (PreLort segment-wise rule).

    Index ``j`` along ``rank_dim`` becomes ``sum_{i: r_i > j} w_i X_i[j] / sum_{i: r_i > j} w_i``;
    indices no tensor covers keep their value in ``previous`` (whose shape fixes the rank).
    ``scales`` (one per tensor) multiply the tensors, not the weights: ``X_i`` is read as
    ``c_i X_i`` (a factor brought to another scale) without a copy.
    """
    rank = previous.shape[rank_dim]
    _check_rank_stack([previous, *tensors], rank, rank_dim, "segment_average")
    scaled = weights if scales is None else [w * c for w, c in zip(weights, scales, strict=True)]
    total = padded_weighted_sum(tensors, scaled, rank, rank_dim=rank_dim)
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
