import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file

from coldllm.backbones import BACKBONES, build_backbone, load_backbone, train_backbone
from coldllm.backbones.train import decayed_lr
from coldllm.backbones.graph import normalized_adjacency, spectral_factors, spmm_symmetric
from conftest import community_auc


def test_normalized_adjacency_by_hand():
    # user 0 - items 0, 1; user 1 - item 0. Degrees: u0=2, u1=1, i0=2, i1=1.
    train = sp.csr_matrix(np.array([[1, 1], [1, 0]], dtype=np.float32))
    adj = normalized_adjacency(train).to_dense()
    expected = torch.zeros(4, 4)
    for u, i in [(0, 0), (0, 1), (1, 0)]:
        deg_u, deg_i = [2, 1][u], [2, 1][i]
        expected[u, 2 + i] = expected[2 + i, u] = 1 / np.sqrt(deg_u * deg_i)
    torch.testing.assert_close(adj, expected)


def test_symmetric_spmm_gradient_matches_dense():
    train = sp.random(6, 5, density=0.5, format="csr", random_state=1)
    train.data[:] = 1
    adj = normalized_adjacency(train)
    x = torch.randn(11, 3, requires_grad=True)
    (spmm_symmetric(adj, x) ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    ((adj.to_dense() @ x2) ** 2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("model", sorted(BACKBONES))
def test_backbone_learns_tiny_data(model, tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.backbone.model = model
    backbone = build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1)
    before = community_auc(tiny_data, *backbone.embeddings())
    result = train_backbone(backbone, tiny_data, tiny_cfg, tmp_path / model)
    best = load_backbone(tmp_path / model, tiny_data)
    after = community_auc(tiny_data, *best.embeddings())
    assert result.history[0]["loss"] > result.history[-1]["loss"]
    assert before < 0.6 and after > 0.75, (before, after)
    assert (tmp_path / model / "best.safetensors").exists()


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_resume_reproduces_uninterrupted_run(tiny_data, tiny_cfg, tmp_path, decay):
    """Killed after 3 epochs and resumed: the same weights and optimiser state as the run that was
    never stopped, also when the learning rate decays on validations that did not improve."""
    tiny_cfg.backbone.model, tiny_cfg.backbone.epochs = "lightgcn", 6
    tiny_cfg.backbone.lr_decay, tiny_cfg.backbone.eval_every = decay, 1
    full = build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1)
    train_backbone(full, tiny_data, tiny_cfg, tmp_path / "full")

    tiny_cfg.backbone.epochs = 3  # "killed" after 3 epochs ...
    part = build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1)
    train_backbone(part, tiny_data, tiny_cfg, tmp_path / "part")
    tiny_cfg.backbone.epochs = 6  # ... then resumed in a fresh model object
    resumed = build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1)
    result = train_backbone(resumed, tiny_data, tiny_cfg, tmp_path / "part")
    assert result.epoch == 6 and len(result.history) == 6
    if decay < 1:  # the resumed part must start from a decayed rate for this to test the decay
        assert decayed_lr(1.0, decay, result.history[:3], "val_warm_ndcg@20") < 1.0
    a = load_file(str(tmp_path / "full" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "last.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_early_stopping_stops(tiny_data, tiny_cfg, tmp_path):
    tiny_cfg.backbone.model, tiny_cfg.backbone.lr = "mf", 0.0  # nothing improves after the first check
    tiny_cfg.backbone.epochs, tiny_cfg.backbone.eval_every, tiny_cfg.backbone.patience = 50, 1, 2
    result = train_backbone(build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1), tiny_data,
                            tiny_cfg, tmp_path)
    assert result.epoch == 3 and result.best_epoch == 1


def test_unknown_backbone_is_named(tiny_data, tiny_cfg):
    tiny_cfg.backbone.model = "gru4rec"
    with pytest.raises(ValueError, match="gru4rec"):
        build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1)


def test_decayed_lr_counts_validations_without_a_new_best():
    history = [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "v": 0.2}, {"epoch": 3, "v": 0.1}, {"epoch": 4, "v": 0.2},
               {"epoch": 5, "v": 0.3}, {"epoch": 6, "loss": 0.5}, {"epoch": 7, "v": 0.25}]
    assert decayed_lr(0.01, 0.5, history, "v") == pytest.approx(0.01 * 0.5 ** 3)  # epochs 3, 4 and 7
    assert decayed_lr(0.01, 1.0, history, "v") == 0.01
    assert decayed_lr(0.01, 0.5, [], "v") == 0.01


def test_learning_rate_decays_on_validations_without_improvement(tiny_data, tiny_cfg, tmp_path, monkeypatch):
    from coldllm.backbones import train as train_module

    made = []

    class Recorded(torch.optim.Adam):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module.torch.optim, "Adam", Recorded)
    tiny_cfg.backbone.model, tiny_cfg.backbone.lr = "mf", 1e-12  # no validation after the first improves
    tiny_cfg.backbone.epochs, tiny_cfg.backbone.eval_every, tiny_cfg.backbone.patience = 4, 1, 10
    tiny_cfg.backbone.lr_decay = 0.5
    result = train_backbone(build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=1), tiny_data,
                            tiny_cfg, tmp_path)
    assert result.best_epoch == 1 and made[0].param_groups[0]["lr"] == pytest.approx(1e-12 * 0.5 ** 3)


def test_spectral_factors_rebuild_the_normalised_matrix():
    # 6 users x 5 items, item 4 without any interaction (a cold item): rank <= 4 < dim, so the
    # factors must rebuild D_u^-1/2 R D_i^-1/2 exactly, and each pair must be an eigenvector of the
    # adjacency that LightGCN propagates over
    dense = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [0, 1, 1, 1, 0],
                      [0, 0, 0, 1, 0], [1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=np.float32)
    train = sp.csr_matrix(dense)
    torch.manual_seed(0)
    users, items = spectral_factors(train, dim=8)
    assert users.shape == (6, 8) and items.shape == (5, 8)
    scaled = dense / np.sqrt(dense.sum(1, keepdims=True)) / np.sqrt(np.maximum(dense.sum(0, keepdims=True), 1))
    torch.testing.assert_close(users @ items.T, torch.from_numpy(scaled), atol=1e-5, rtol=0)
    assert torch.all(items[4] == 0)
    adj = normalized_adjacency(train).to_dense()
    for k in range(4):
        joint = torch.cat([users[:, k], items[:, k]])
        sigma = users[:, k].norm() ** 2  # |u|^2 = |v|^2 = s, the eigenvalue of [u; v]
        torch.testing.assert_close(adj @ joint, joint * sigma, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
def test_spectral_start(model, tiny_data, tiny_cfg):
    train = tiny_data.matrix("train")
    tiny_cfg.backbone.model = model
    normal = build_backbone(tiny_cfg.backbone, train, seed=3)
    tiny_cfg.backbone.init, tiny_cfg.backbone.init_scale = "spectral", 0.1
    spectral = build_backbone(tiny_cfg.backbone, train, seed=3)
    again = build_backbone(tiny_cfg.backbone, train, seed=3)
    torch.testing.assert_close(spectral.state_dict(), again.state_dict(), rtol=0, atol=0)  # seeded
    for table, degree in (("user", train.getnnz(axis=1)), ("item", train.getnnz(axis=0))):
        start, random = getattr(spectral, table).weight, getattr(normal, table).weight
        rows = torch.from_numpy(degree > 0)
        assert float(start[rows].detach().pow(2).mean().sqrt()) == pytest.approx(0.1, rel=1e-4)
        # rows without interactions (cold items) keep the random start they would have had
        torch.testing.assert_close(start[~rows], random[~rows], rtol=0, atol=0)
    assert (~torch.from_numpy(train.getnnz(axis=0) > 0)).any()  # the tiny data has cold items
    # untrained, the leading directions alone already rank each user's community first
    tiny_cfg.backbone.dim = 2
    assert community_auc(tiny_data, *build_backbone(tiny_cfg.backbone, train, seed=3).embeddings()) > 0.75
    tiny_cfg.backbone.init = "normal"
    assert community_auc(tiny_data, *build_backbone(tiny_cfg.backbone, train, seed=3).embeddings()) < 0.6


def test_loading_a_spectral_backbone_gives_its_weights_and_settings(tiny_data, tiny_cfg, tmp_path, monkeypatch):
    from coldllm.backbones import graph
    from coldllm.backbones.train import save_backbone

    tiny_cfg.backbone.init = "spectral"
    model = build_backbone(tiny_cfg.backbone, tiny_data.matrix("train"), seed=2)
    save_backbone(model, tmp_path)
    # the saved weights replace the start, so loading computes no SVD
    monkeypatch.setattr(graph.torch, "svd_lowrank", lambda *a, **k: pytest.fail("SVD computed on load"))
    loaded = load_backbone(tmp_path, tiny_data)
    assert loaded.cfg == model.cfg and loaded.cfg.init == "spectral"
    torch.testing.assert_close(loaded.state_dict(), model.state_dict(), rtol=0, atol=0)
