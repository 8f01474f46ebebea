"""Looking inside a model: parameter counts and shapes layer by layer."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["count_parameters", "count_macs", "layer_summary", "network_depth"]


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalars in ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def count_macs(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one example of ``input_shape``.

    Counts the convolutions (each output value costs in_channels / groups x
    kernel area) and the dense layers (in_features per output value), where
    nearly all the arithmetic of these networks is; activations, pooling and
    normalisation add a few element-wise operations per value and are left out.
    ``input_shape`` is one example's shape such as ``(1, 28, 28)``.
    """
    total = 0

    def conv(m: nn.Conv2d, inp, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def dense(m: nn.Linear, inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else dense)
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(net.parameters(), torch.zeros(())).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return total


# The autograd nodes that a convolution or a dense layer leaves in the graph.
_WEIGHT_OPS = ("ConvolutionBackward", "AddmmBackward", "MmBackward", "LinearBackward")


def network_depth(net: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Convolutions and dense layers on the longest path from the input to the output.

    The path is read off the autograd graph of one forward pass, so parallel
    branches (Inception paths) count once and shortcuts do not shorten the
    count: ResNet-18 has depth 18 whatever its code looks like.
    """
    device = next(net.parameters(), torch.zeros(())).device
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            out = net(torch.zeros((1, *input_shape), device=device, requires_grad=True))
    finally:
        net.train(was_training)
    if out.grad_fn is None:
        return 0
    longest: dict = {}
    # Iterative longest-path over the graph (deep networks exceed Python's recursion limit).
    stack = [(out.grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if node in longest:
            continue
        parents = [f for f, _ in node.next_functions if f is not None]
        if not expanded:
            stack.append((node, True))
            stack.extend((f, False) for f in parents if f not in longest)
            continue
        own = int(type(node).__name__.startswith(_WEIGHT_OPS))
        longest[node] = own + max((longest[f] for f in parents), default=0)
    return longest[out.grad_fn]


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
