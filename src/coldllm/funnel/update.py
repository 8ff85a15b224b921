"""The update: simulated interactions give cold items ordinary behaviour embeddings.

* ``augmented_train``: warm training pairs plus the accepted simulated pairs, as one matrix on
  which the backbone is retrained from scratch (the paper's way); the cold items then take part in
  propagation and negative sampling like any other item.
* ``fast_cold_update``: for items added online, everything stays frozen except the new items'
  embeddings, fitted by BPR to their simulated users against warm negatives. Seconds, not a
  retraining; the embeddings can start from a content mapping instead of zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F


def augmented_train(train: sp.csr_matrix, simulated: pd.DataFrame) -> sp.csr_matrix:
    """Training matrix with the accepted simulated (user, item) pairs added (binary)."""
    accepted = simulated[simulated["accepted"]] if "accepted" in simulated else simulated
    extra = sp.csr_matrix(
        (np.ones(len(accepted), np.float32), (accepted["user"].to_numpy(), accepted["item"].to_numpy())),
        shape=train.shape,
    )
    out = (train + extra).tocsr()
    out.data[:] = 1.0
    return out


def fast_cold_update(user_emb: torch.Tensor, item_emb: torch.Tensor, pairs: pd.DataFrame,
                     cold_ids: np.ndarray, init: torch.Tensor | None = None, epochs: int = 50,
                     lr: float = 0.05, reg: float = 1e-4, negatives: int = 8, seed: int = 0) -> torch.Tensor:
    """New embeddings for ``cold_ids`` from their simulated users; other rows stay as they are.

    ``pairs``: accepted (user, item) rows for the cold items. Each step contrasts every pair with
    ``negatives`` random warm items through the frozen user embeddings (BPR).
    """
    gen = torch.Generator().manual_seed(seed)
    device = item_emb.device
    cold_ids = torch.as_tensor(cold_ids, device=device)
    warm_mask = torch.ones(len(item_emb), dtype=torch.bool, device=device)
    warm_mask[cold_ids] = False
    warm = torch.nonzero(warm_mask).squeeze(1)
    start = init.clone() if init is not None else torch.zeros(len(cold_ids), item_emb.shape[1], device=device)
    emb = torch.nn.Parameter(start.to(device=device, dtype=item_emb.dtype))
    position = torch.full((len(item_emb),), -1, dtype=torch.long, device=device)
    position[cold_ids] = torch.arange(len(cold_ids), device=device)
    users = torch.as_tensor(pairs["user"].to_numpy(copy=True), device=device)
    rows = position[torch.as_tensor(pairs["item"].to_numpy(copy=True), device=device)]
    if (rows < 0).any():
        raise ValueError("fast_cold_update: a pair's item is not among cold_ids")
    opt = torch.optim.Adam([emb], lr=lr)
    u = user_emb[users]
    for _ in range(epochs if len(users) else 0):
        neg = warm[torch.randint(len(warm), (len(users), negatives), generator=gen).to(device)]
        pos_score = (u * emb[rows]).sum(1, keepdim=True)
        neg_score = torch.einsum("bd,bnd->bn", u, item_emb[neg])
        loss = F.softplus(neg_score - pos_score).mean() + reg * emb.pow(2).sum() / len(cold_ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = item_emb.clone()
    out[cold_ids] = emb.detach()
    return out
