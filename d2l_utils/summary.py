"""Looking inside a model: parameter counts and shapes layer by layer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_parameters", "layer_summary"]


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalars in ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def layer_summary(net: nn.Module, X: torch.Tensor | tuple[int, ...], depth: int = 1) -> list[tuple]:
    """Print the output shape and parameter count of each layer for one input.

    ``X`` is a tensor or an input shape such as ``(1, 1, 224, 224)``. Layers are
    the children of ``net`` (``depth=2`` goes one level further into containers).
    Lazy layers are materialised by the pass. Returns (name, shape, parameters) rows.
    """
    if not isinstance(X, torch.Tensor):
        X = torch.zeros(X)
    X = X.to(next(net.parameters(), torch.zeros(())).device)

    def leaves(module: nn.Module, prefix: str, level: int):
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if level < depth and len(list(child.children())):
                yield from leaves(child, path, level + 1)
            else:
                yield path, child

    rows: list[tuple] = []
    hooks = [child.register_forward_hook(
        lambda m, inp, out, path=path: rows.append((path, type(m).__name__, tuple(out.shape), m)))
        for path, child in leaves(net, "", 1)]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(X)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    width = max(len(f"{p} {t}") for p, t, _, _ in rows) + 2
    print(f"{'layer':<{width}}{'output shape':<22}{'parameters':>11}")
    print(f"{'input':<{width}}{str(tuple(X.shape)):<22}")
    result = []
    for path, kind, shape, module in rows:
        params = count_parameters(module)
        print(f"{path + ' ' + kind:<{width}}{str(shape):<22}{params:>11,}")
        result.append((path, shape, params))
    print(f"{'total':<{width}}{'':<22}{count_parameters(net):>11,}")
    return result
