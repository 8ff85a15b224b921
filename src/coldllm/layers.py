"""The one builder of the small feed-forward towers that the baselines and the filter train."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], act: type[nn.Module] = nn.Tanh, *, batch_norm: bool = False, dropout: float | None = None,
        input_norm: bool = False, last_act: bool = False) -> nn.Sequential:
    """Linear layers through ``dims``; each hidden one is followed by [BatchNorm], ``act``, [Dropout].

    ``input_norm`` puts a BatchNorm on the input (GAR's towers read embeddings of any scale);
    ``last_act`` applies ``act`` after the output layer too. ``dropout=None`` adds no Dropout module
    at all, so towers without one keep their layer numbering (and saved parameter names). Layers
    are created in order, so the same seed gives the same initial weights as any tower of the same
    shape built by hand.
    """
    layers: list[nn.Module] = [nn.BatchNorm1d(dims[0])] if input_norm else []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
            if dropout is not None:
                layers.append(nn.Dropout(dropout))
        elif last_act:
            layers.append(act())
    return nn.Sequential(*layers)
