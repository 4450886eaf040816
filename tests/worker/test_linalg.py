"""The numeric kernels against dense, independently computed references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.worker.conftest import DEVICES
from worker.linalg import (
    core_and_gram,
    dense_svd,
    factored_svd,
    frobenius_norm_product,
    pad_rank,
    padded_weighted_sum,
    r_factor,
    resolve_device,
    segment_average,
    stack_factors,
    top_eigenvectors,
    weighted_sum,
)
from worker.strategies.errors import ShapeMismatchError

F64 = torch.float64


def _clients(
    m: int, d: int, ranks: tuple[int, ...], batch: tuple[int, ...] = (), seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    Bs = [torch.randn(*batch, m, r, generator=gen, dtype=F64) for r in ranks]
    As = [torch.randn(*batch, r, d, generator=gen, dtype=F64) for r in ranks]
    return Bs, As


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("device", DEVICES)
def test_factored_svd_equals_dense_truncation(device: str) -> None:
    Bs, As = _clients(96, 64, (4, 8, 16, 2), batch=(3,))
    Bs, As = [b.to(device) for b in Bs], [a.to(device) for a in As]
    coeffs = [0.1, 0.2, 0.3, 0.4]
    Bc, Ac = stack_factors(Bs, As, coeffs)
    W = sum(c * B @ A for c, B, A in zip(coeffs, Bs, As, strict=True))  # independent reference
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    fact = factored_svd(Bc, Ac, rank=12)
    assert fact.S.shape == (3, 12)  # only the requested triplets are computed
    torch.testing.assert_close(fact.S, S[..., :12], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fact.energy, (S**2).sum(-1), rtol=1e-10, atol=1e-10)
    eye = torch.eye(12, dtype=F64, device=device)
    torch.testing.assert_close(fact.U.mT @ fact.U, eye.expand(3, 12, 12))
    torch.testing.assert_close(fact.Vh @ fact.Vh.mT, eye.expand(3, 12, 12))
    for k in (1, 5, 12):
        ref = U[..., :k] * S[..., None, :k] @ Vh[..., :k, :]
        B, A = fact.factors(k, scaling=2.0)
        assert _rel(2.0 * B @ A, ref) < 1e-5
        Bb, Ab = fact.factors(k, scaling=2.0, split="balanced")
        assert _rel(2.0 * Bb @ Ab, ref) < 1e-5
    dense = dense_svd(Bc, Ac, rank=12)
    Bd, Ad = dense.factors(12, 1.0)
    Bf, Af = fact.factors(12, 1.0)
    assert _rel(Bf @ Af, Bd @ Ad) < 1e-5


def test_factored_svd_attains_the_eckart_young_optimum() -> None:
    Bs, As = _clients(80, 50, (3, 5, 7), seed=1)
    Bc, Ac = stack_factors(Bs, As, [0.5, 0.3, 0.2])
    W = Bc @ Ac
    fact = factored_svd(Bc, Ac)
    S = torch.linalg.svdvals(W)
    gen = torch.Generator().manual_seed(5)
    for k in (2, 6, 10):
        B, A = fact.factors(k, 1.0)
        err = torch.linalg.norm(W - B @ A) ** 2
        torch.testing.assert_close(err, (S[k:] ** 2).sum(), rtol=1e-9, atol=1e-9)
        assert float(fact.tail_ratio(k)) == pytest.approx(float(err.sqrt() / S.norm()), rel=1e-9)
        for _ in range(5):  # no other rank-k matrix does better
            Q, _ = torch.linalg.qr(torch.randn(80, k, generator=gen, dtype=F64))
            assert torch.linalg.norm(W - Q @ (Q.T @ W)) ** 2 >= err


def test_factored_svd_in_float32_is_accurate() -> None:
    Bs, As = _clients(128, 96, (8, 16, 32), seed=2)
    Bs32, As32 = [b.float() for b in Bs], [a.float() for a in As]
    Bc, Ac = stack_factors(Bs32, As32, [0.2, 0.3, 0.5])
    W = stack_factors(Bs, As, [0.2, 0.3, 0.5])[0] @ stack_factors(Bs, As, [0.2, 0.3, 0.5])[1]
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    B, A = factored_svd(Bc, Ac, 16).factors(16, 1.0)
    assert B.dtype == torch.float32
    assert _rel((B @ A).double(), U[:, :16] * S[:16] @ Vh[:16]) < 1e-5


def test_factored_svd_falls_back_to_dense_when_rank_is_large() -> None:
    Bs, As = _clients(12, 10, (6, 6), seed=3)
    Bc, Ac = stack_factors(Bs, As, [1.0, 1.0])
    fact = factored_svd(Bc, Ac, 4)  # R = 12 >= min(m, d) = 10
    S = torch.linalg.svdvals(Bc @ Ac)
    torch.testing.assert_close(fact.S, S[:4])
    torch.testing.assert_close(fact.energy, (S**2).sum())
    assert fact.U.shape == (12, 4)


def test_factored_svd_of_rank_deficient_and_zero_products() -> None:
    """Clients that start from the same factors stack nearly collinear columns; some send 0."""
    Bs, As = _clients(64, 48, (6, 4), seed=7)
    Bs = [Bs[0], Bs[0][:, :4] + 1e-9 * Bs[1], torch.zeros(64, 3, dtype=F64)]
    As = [As[0], As[0][:4] + 1e-9 * As[1], torch.randn(3, 48, dtype=F64)]
    Bc, Ac = stack_factors(Bs, As, [0.5, 0.3, 0.2])  # R = 13, rank(W) = 6 (+ 1e-9 terms)
    U, S, Vh = torch.linalg.svd(Bc @ Ac, full_matrices=False)
    fact = factored_svd(Bc, Ac, rank=10)  # asks for more components than W has
    assert bool(torch.isfinite(fact.U).all())
    assert bool(torch.isfinite(fact.Vh).all())
    torch.testing.assert_close(fact.U.mT @ fact.U, torch.eye(10, dtype=F64))
    torch.testing.assert_close(fact.Vh @ fact.Vh.mT, torch.eye(10, dtype=F64))
    torch.testing.assert_close(fact.S, S[:10], rtol=0, atol=1e-12 * float(S[0]))
    for k in (3, 6, 10):
        B, A = fact.factors(k, 1.0)
        ref = U[:, :k] * S[:k] @ Vh[:k]
        assert _rel(B @ A, ref) < 1e-9
    zero = factored_svd(torch.zeros(64, 13, dtype=F64), torch.zeros(13, 48, dtype=F64), 5)
    B, A = zero.factors(5, 1.0, "balanced")
    assert float(B.abs().max()) == 0.0
    assert float(zero.tail_ratio(5)) == 0.0
    torch.testing.assert_close(zero.Vh @ zero.Vh.mT, torch.eye(5, dtype=F64))


def test_factored_svd_when_the_stack_is_narrower_than_the_rank() -> None:
    """Two clients of ranks 2 and 4 under a global rank 8: every component is kept, 0 tail."""
    Bs, As = _clients(40, 30, (2, 4), seed=10)
    Bc, Ac = stack_factors(Bs, As, [0.5, 0.5])
    fact = factored_svd(Bc, Ac, rank=8)
    assert fact.rank == 6
    assert float(fact.tail_ratio(8)) == pytest.approx(0.0, abs=1e-7)
    B, A = fact.factors(8, 1.0)
    assert B.shape == (40, 8)
    assert A.shape == (8, 30)
    assert _rel(B @ A, Bc @ Ac) < 1e-12


@pytest.mark.parametrize("backend", ["lapack", "torch"])
def test_top_eigenvectors_of_both_backends(backend: str) -> None:
    """SciPy's ``syevr`` (k vectors; the CPU route) and ``torch.linalg.eigh`` (CUDA's route)."""
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(2, 40, 40, generator=gen, dtype=F64)
    G = X @ X.mT
    got = top_eigenvectors(G.triu(), 7, backend)  # reads the upper triangle
    values, vectors = torch.linalg.eigh(G)
    ref = vectors[..., -7:].flip(-1)
    assert got.shape == (2, 40, 7)
    # eigenvectors are defined up to sign: compare the projectors
    torch.testing.assert_close(got @ got.mT, ref @ ref.mT)
    rayleigh = (got.mT @ G @ got).diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(rayleigh, values[..., -7:].flip(-1))


def test_frobenius_norm_of_product_without_the_product() -> None:
    Bs, As = _clients(40, 30, (5,), batch=(2, 3), seed=4)
    got = frobenius_norm_product(Bs[0], As[0])
    torch.testing.assert_close(got, torch.linalg.matrix_norm(Bs[0] @ As[0]))


def test_pad_and_truncate_rank() -> None:
    B, A = torch.ones(5, 2), torch.ones(2, 7)
    Bp, Ap = pad_rank(B, A, 4)
    assert Bp.shape == (5, 4)
    assert Ap.shape == (4, 7)
    torch.testing.assert_close(Bp @ Ap, B @ A)
    Bt, At = pad_rank(Bp, Ap, 1)
    assert Bt.shape == (5, 1)
    assert At.shape == (1, 7)


@settings(max_examples=25, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    weights=st.lists(st.floats(0.1, 10.0), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_segment_average_is_the_per_index_mean_over_covering_clients(
    ranks: list[int], weights: list[float], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    rank = 6
    Bs = [torch.randn(4, r, generator=gen, dtype=F64) for r in ranks]
    previous = torch.randn(4, rank, generator=gen, dtype=F64)
    w = weights[: len(ranks)]
    got = segment_average(Bs, w, previous, rank_dim=-1)
    for j in range(rank):  # independent loop over indices
        covering = [(wi, B[:, j]) for wi, B in zip(w, Bs, strict=True) if B.shape[1] > j]
        if not covering:
            torch.testing.assert_close(got[:, j], previous[:, j])
            continue
        expected = sum(wi * col for wi, col in covering) / sum(wi for wi, _ in covering)
        torch.testing.assert_close(got[:, j], expected)
    As = [B.T.contiguous() for B in Bs]
    got_a = segment_average(As, w, previous.T.contiguous(), rank_dim=-2)
    torch.testing.assert_close(got_a, got.T)


def test_padded_weighted_sum_and_weighted_sum() -> None:
    a, b = torch.ones(3, 2, dtype=F64), 2 * torch.ones(3, 4, dtype=F64)
    out = padded_weighted_sum([a, b], [0.25, 0.5], 5, rank_dim=-1)
    expected = torch.zeros(3, 5, dtype=F64)
    expected[:, :2] += 0.25
    expected[:, :4] += 1.0
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weighted_sum([a, 3 * a], [0.5, 0.5]), 2 * a)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stack_factors([torch.ones(4, 2)], [torch.ones(3, 5)], [1.0]), "do not chain"),
        (
            lambda: stack_factors(
                [torch.ones(4, 2), torch.ones(5, 2)], [torch.ones(2, 3), torch.ones(2, 3)], [1, 1]
            ),
            "vs m=4",
        ),
        (lambda: factored_svd(torch.ones(2, 4, 2), torch.ones(3, 2, 5)), "do not chain"),
        (lambda: padded_weighted_sum([torch.ones(3, 6)], [1.0], 4, rank_dim=-1), "rank 4"),
        (
            lambda: segment_average([torch.ones(3, 2)], [1.0], torch.ones(4, 4), rank_dim=-1),
            "vs",
        ),
        (lambda: weighted_sum([torch.ones(2), torch.ones(3)], [1, 1]), "vs"),
        (lambda: frobenius_norm_product(torch.ones(3), torch.ones(3, 2)), "at least 2"),
    ],
)
def test_shape_mismatch_is_a_named_error(call: object, message: str) -> None:
    with pytest.raises(ShapeMismatchError, match=message):
        call()  # type: ignore[operator]


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")


def test_r_factor_and_core_products_of_the_factored_route() -> None:
    gen = torch.Generator().manual_seed(9)
    X = torch.randn(2, 30, 7, generator=gen, dtype=F64).mT.contiguous().mT  # column-major stack
    RX = r_factor(X)
    assert RX.shape == (2, 7, 7)
    torch.testing.assert_close(RX, RX.triu())
    torch.testing.assert_close(RX.mT @ RX, X.mT @ X)  # R^T R = X^T X
    RB, RA = RX, r_factor(torch.randn(2, 25, 7, generator=gen, dtype=F64))
    for backend in ("lapack", "torch"):  # BLAS trmm and syrk (CPU), torch products (CUDA)
        core, gram = core_and_gram(RB, RA, backend)
        torch.testing.assert_close(core, RB @ RA.mT)
        torch.testing.assert_close(gram.triu(), (core.mT @ core).triu())  # upper triangle only
