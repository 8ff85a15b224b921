"""The symmetric-normalised user-item adjacency, built sparse from the start.

A = [[0, R], [R^T, 0]] over users + items, scaled to D^-1/2 A D^-1/2. Only the nonzeros ever
exist: a dense (n_users + n_items)^2 matrix is what makes graph recommenders run out of memory.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    """degree^-1/2, with isolated nodes (cold items) at zero."""
    degree = np.asarray(degree, dtype=np.float64)
    out = np.zeros_like(degree)
    nonzero = degree > 0
    out[nonzero] = degree[nonzero] ** -0.5
    return out


def normalized_adjacency(train: sp.csr_matrix, self_loops: bool = False) -> torch.Tensor:
    n_users, n_items = train.shape
    coo = train.tocoo()
    rows = np.concatenate([coo.row, coo.col + n_users])
    cols = np.concatenate([coo.col + n_users, coo.row])
    n = n_users + n_items
    if self_loops:
        rows = np.concatenate([rows, np.arange(n)])
        cols = np.concatenate([cols, np.arange(n)])
    inv_sqrt = inverse_sqrt(np.bincount(rows, minlength=n))
    values = inv_sqrt[rows] * inv_sqrt[cols]
    index = torch.from_numpy(np.stack([rows, cols])).long()
    adj = torch.sparse_coo_tensor(index, torch.from_numpy(values).float(), (n, n), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR is what makes A @ X fast
        warnings.simplefilter("ignore", UserWarning)
        return adj.coalesce().to_sparse_csr()


def spectral_factors(train: sp.csr_matrix, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item factors U S^1/2 and V S^1/2 of the top-``dim`` singular triplets of the
    normalised interaction matrix D_u^-1/2 R D_i^-1/2 (randomised SVD; draws from torch's RNG).

    [u; v] for a singular pair is an eigenvector of the normalised adjacency with eigenvalue s, so
    LightGCN's propagation keeps these directions and only reweights them: the start already scores
    like a spectral graph filter (GF-CF, SVD-GCN), and BPR has less to learn. The product of the two
    factors is the best rank-``dim`` approximation of the normalised matrix.
    """
    scale_u, scale_i = inverse_sqrt(train.getnnz(axis=1)), inverse_sqrt(train.getnnz(axis=0))
    coo = (sp.diags(scale_u) @ train @ sp.diags(scale_i)).tocoo()
    index = torch.from_numpy(np.stack([coo.row, coo.col])).long()
    matrix = torch.sparse_coo_tensor(index, torch.from_numpy(coo.data).float(), coo.shape, check_invariants=True)
    q = min(dim, *train.shape)
    u, s, v = torch.svd_lowrank(matrix.coalesce(), q=q, niter=4)
    root = s.clamp_min(0).sqrt()
    users, items = torch.zeros(train.shape[0], dim), torch.zeros(train.shape[1], dim)
    users[:, :q], items[:, :q] = u * root, v * root
    return users, items


class _SymmetricSpMM(torch.autograd.Function):
    """y = A x for a symmetric sparse A, whose gradient is again A (grad y): no transpose needed.

    torch's generic sparse backward transposes the CSR matrix on every call, which costs twice the
    forward product on a CPU; the normalised adjacency is symmetric, so that work is avoidable.
    """

    @staticmethod
    def forward(ctx, adj: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ dense

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


def spmm_symmetric(adj: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """One propagation step over the symmetric normalised adjacency."""
    return _SymmetricSpMM.apply(adj, dense)
