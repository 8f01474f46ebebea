"""Looking inside a model: parameter counts and shapes layer by layer, receptive fields,
feature maps and class activation maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["count_parameters", "count_macs", "layer_summary", "network_depth", "receptive_fields",
           "feature_maps", "class_activation_map"]


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


# --- receptive fields ---------------------------------------------------------------------------

# Layers that compute each output position from the same position of their input only.
_PER_POSITION = (nn.Identity, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.GroupNorm, nn.LocalResponseNorm, nn.modules.dropout._DropoutNd)
# After these the outputs no longer form a grid over the input.
_GRID_ENDS = (nn.Flatten, nn.Linear)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _acts_per_position(layer: nn.Module) -> bool:
    is_activation = (type(layer).__module__ == nn.modules.activation.__name__
                     and not isinstance(layer, nn.MultiheadAttention))
    return is_activation or isinstance(layer, _PER_POSITION)


def _window(layer: nn.Module, in_hw: tuple[int, ...], out_hw: tuple[int, ...]):
    """(kernel, stride, padding) per axis of a sliding-window layer, the kernel dilated; else None."""
    if isinstance(layer, nn.Conv2d):
        kernel = tuple(d * (k - 1) + 1 for k, d in zip(_pair(layer.kernel_size), _pair(layer.dilation)))
        if layer.padding == "valid":
            padding = (0, 0)
        elif layer.padding == "same":  # PyTorch puts the smaller half of an odd total on the left
            padding = tuple((k - 1) // 2 for k in kernel)
        else:
            padding = _pair(layer.padding)
        return kernel, _pair(layer.stride), padding
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        dilation = _pair(getattr(layer, "dilation", 1))  # average pooling has none
        kernel = tuple(d * (k - 1) + 1 for k, d in zip(_pair(layer.kernel_size), dilation))
        return kernel, _pair(layer.stride), _pair(layer.padding)
    if isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # Windows all alike only when the output side divides the input side.
        if len(in_hw) >= 2 and all(i % o == 0 for i, o in zip(in_hw[-2:], out_hw[-2:])):
            kernel = tuple(i // o for i, o in zip(in_hw[-2:], out_hw[-2:]))
            return kernel, kernel, (0, 0)
    return None


def _sequential_leaves(net: nn.Sequential, prefix: str = ""):
    for name, child in net.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if type(child) is nn.Sequential:  # a subclass may override forward, so it is not opened
            yield from _sequential_leaves(child, path)
        else:
            yield path, child


def _one(value: tuple):
    """A single number when both axes agree, else the (height, width) pair."""
    return value[0] if value[0] == value[1] else value


def _cell(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "x".join(format(v, spec) for v in value)
    return format(value, spec)


def receptive_fields(net: nn.Sequential, input_shape: tuple[int, ...], verbose: bool = True) -> list[dict]:
    """Print and return, layer by layer, the receptive field of one output of ``net``.

    Each row holds the layer's name ("0 Conv2d"), one example's output ``shape``, and
    ``r`` (side of the input square that one output depends on), ``j`` (input pixels
    between neighbouring outputs) and ``start`` (input coordinate of the centre of the
    first output's field), from r = 1, j = 1, start = 0.5 and, for a window of side k
    (d (k - 1) + 1 when dilated), stride s and padding p,
    j' = j s, r' = r + (k - 1) j, start' = start + ((k - 1) / 2 - p) j.
    Coordinates put pixel i at [i, i + 1), so its centre is at i + 0.5; ``r`` counts
    padding too, so it can exceed the image. A value is a (height, width) pair where
    the two axes differ.

    Nested Sequentials are opened and their layers listed with dotted names
    ("1.0 Conv2d"). Convolutions and max/average pooling slide windows; activations,
    normalisation and dropout act position by position and keep r, j and start;
    adaptive pooling is a window when its output side divides its input side. From
    the first Flatten or Linear layer (or uneven adaptive pooling) on, the outputs no
    longer form a grid over the input, and r, j and start are None. Any other layer
    (a residual block, say) raises ValueError: pass the Sequential up to it instead.
    ``input_shape`` is one example's shape, such as ``(1, 28, 28)``.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"receptive_fields follows the layers of an nn.Sequential, got {type(net).__name__}")
    layers = list(_sequential_leaves(net))
    device = next(net.parameters(), torch.zeros(())).device
    X = torch.zeros((1, *input_shape), device=device)
    shapes = []
    was_training = net.training
    net.eval()
    try:  # layer by layer is the Sequential's own forward pass, with every shape on the way
        with torch.no_grad():
            for _, layer in layers:
                X = layer(X)
                shapes.append(tuple(X.shape[1:]))
    finally:
        net.train(was_training)

    r, j, start = (1, 1), (1, 1), (0.5, 0.5)
    on_grid = True
    in_shape = tuple(input_shape)
    rows = []
    for (path, layer), shape in zip(layers, shapes):
        name = f"{path} {type(layer).__name__}"
        if on_grid:
            window = _window(layer, in_shape, shape)
            if window is not None:
                kernel, stride, padding = window
                start = tuple(a + ((k - 1) / 2 - p) * b for a, k, p, b in zip(start, kernel, padding, j))
                r = tuple(a + (k - 1) * b for a, k, b in zip(r, kernel, j))
                j = tuple(b * s for b, s in zip(j, stride))
            elif isinstance(layer, (_GRID_ENDS, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                on_grid = False
            elif not _acts_per_position(layer):
                raise ValueError(f"layer {name} is neither a convolution, a pooling layer nor a layer "
                                 "that acts position by position, so its receptive field is unknown here: "
                                 "pass the Sequential up to it")
        rows.append({"layer": name, "shape": shape, "r": _one(r) if on_grid else None,
                     "j": _one(j) if on_grid else None, "start": _one(start) if on_grid else None})
        in_shape = shape

    if verbose:
        width = max(len(row["layer"]) for row in rows) + 2
        shape_width = max(len(str(row["shape"])) for row in rows) + 2
        shape_width = max(shape_width, len("output shape") + 2, len(str(tuple(input_shape))) + 2)
        print(f"{'layer':<{width}}{'output shape':<{shape_width}}{'receptive field':>15}"
              f"{'jump':>7}{'start':>9}")
        print(f"{'input':<{width}}{str(tuple(input_shape)):<{shape_width}}{1:>15}{1:>7}{0.5:>9.1f}")
        for row in rows:
            print(f"{row['layer']:<{width}}{str(row['shape']):<{shape_width}}{_cell(row['r'], 'd'):>15}"
                  f"{_cell(row['j'], 'd'):>7}{_cell(row['start'], '.1f'):>9}")
    return rows


# --- feature maps and class activation maps ------------------------------------------------------

def feature_maps(net: nn.Sequential, image: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The output of each layer of ``net`` for one image (C, H, W), as ("0 Conv2d", output) pairs.

    The layers are the children of ``net``: a block that is itself a Sequential gives
    one map (pass ``net[i]`` and that block's input to look inside it). The pass runs
    in evaluation mode without gradients; each output is the one image's, without
    the batch axis ((C, H, W) or (features,)), on the CPU.
    """
    if not isinstance(net, nn.Sequential):
        raise TypeError(f"feature_maps follows the layers of an nn.Sequential, got {type(net).__name__}")
    if image.dim() != 3:
        raise ValueError(f"image must be one (C, H, W) image, got shape {tuple(image.shape)}")
    device = next(net.parameters(), torch.zeros(())).device
    X = image.detach().to(device).unsqueeze(0)
    maps = []
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for name, layer in net.named_children():
                X = layer(X)
                maps.append((f"{name} {type(layer).__name__}", X[0].cpu()))
    finally:
        net.train(was_training)
    return maps


def class_activation_map(features: torch.Tensor, weight: torch.Tensor, class_index: int,
                         size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class activation map (Zhou et al., 2016): sum over c of weight[class_index, c] * features[c].

    For a network that ends in global average pooling and one dense layer:
    ``features`` (C, h, w) are the last convolutional block's output for one image,
    ``weight`` (num_classes, C) the dense layer's weight. The map's mean is then the
    class's logit less the dense layer's bias. ``size`` (H, W) resizes it bilinearly,
    to lay it over the input image.
    """
    if features.dim() != 3 or weight.dim() != 2 or weight.shape[1] != features.shape[0]:
        raise ValueError(f"features must be (C, h, w) and weight (num_classes, C), got shapes "
                         f"{tuple(features.shape)} and {tuple(weight.shape)}")
    cam = torch.einsum("c,chw->hw", weight[class_index].to(features), features)
    if size is not None:
        cam = F.interpolate(cam[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    return cam
