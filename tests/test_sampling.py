import numpy as np
import scipy.sparse as sp

from coldllm.data import BPRSampler


def test_epoch_covers_every_pair_with_valid_negatives():
    rng = np.random.default_rng(0)
    dense = rng.random((30, 25)) < 0.3
    train = sp.csr_matrix(dense.astype(np.float32))
    candidates = np.arange(20)  # items 20..24 play the cold items: never drawn as negatives
    sampler = BPRSampler(train, candidates=candidates, seed=1)
    batches = list(sampler.epoch(batch_size=16))
    users = np.concatenate([b[0] for b in batches])
    pos = np.concatenate([b[1] for b in batches])
    neg = np.concatenate([b[2] for b in batches])
    assert len(users) == train.nnz and all(len(b[0]) <= 16 for b in batches)
    assert sorted(zip(users, pos)) == sorted(zip(*train.nonzero()))
    assert dense[users, pos].all()
    assert not dense[users, neg].any()
    assert np.isin(neg, candidates).all()


def test_sampler_is_seeded():
    train = sp.random(20, 20, density=0.2, format="csr", random_state=0)
    a = [b[2] for b in BPRSampler(train, seed=3).epoch(8)]
    b = [b[2] for b in BPRSampler(train, seed=3).epoch(8)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
