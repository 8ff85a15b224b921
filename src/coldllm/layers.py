"""The one builder of the small feed-forward towers that the baselines and the filter train, and the
way such a tower is saved as plain layers and read back (no pickle)."""

from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError


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


# Saved stacks (the filter's item towers) are small feed-forward stacks. They are kept as a list of plain layers (type and
# shape, in JSON) plus their tensors, so reading them back needs neither pickle nor the builder
# that made them.
def _layer_spec(layer: nn.Module) -> dict:
    if isinstance(layer, nn.Linear):
        return {"type": "Linear", "in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    if isinstance(layer, nn.BatchNorm1d):
        return {"type": "BatchNorm1d", "n": layer.num_features, "eps": layer.eps, "affine": layer.affine}
    if isinstance(layer, nn.LayerNorm):
        return {"type": "LayerNorm", "shape": list(layer.normalized_shape), "eps": layer.eps}
    if isinstance(layer, nn.Dropout):
        return {"type": "Dropout", "p": layer.p}
    if isinstance(layer, (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.Identity)):
        return {"type": type(layer).__name__}
    raise ConfigError(f"the filter's tower has a {type(layer).__name__} layer, which the service cannot keep")


def flat_layers(prefix: str, module: nn.Module, specs: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """The tower's leaf layers in order (its forward order: nested ``Sequential`` only) and their tensors."""
    leaves = [m for m in module.modules() if not list(m.children())]
    if any(not isinstance(m, nn.Sequential) for m in module.modules() if list(m.children())):
        raise ConfigError(f"the filter's tower {type(module).__name__} is not a plain stack of layers")
    specs[prefix] = [_layer_spec(m) for m in leaves]
    return {f"{prefix}{i}.{k}": v.detach().cpu() for i, m in enumerate(leaves) for k, v in m.state_dict().items()}


def rebuild(prefix: str, spec: list[dict], tensors: dict[str, torch.Tensor]) -> nn.Sequential:
    def layer(s: dict) -> nn.Module:
        kind = s["type"]
        if kind == "Linear":
            return nn.Linear(s["in"], s["out"], bias=s["bias"])
        if kind == "BatchNorm1d":
            return nn.BatchNorm1d(s["n"], eps=s["eps"], affine=s["affine"])
        if kind == "LayerNorm":
            return nn.LayerNorm(s["shape"], eps=s["eps"])
        if kind == "Dropout":
            return nn.Dropout(s["p"])
        return getattr(nn, kind)()

    stack = nn.Sequential(*[layer(s) for s in spec])
    stack.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return stack.eval()
