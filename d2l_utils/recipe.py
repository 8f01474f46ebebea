"""The course's training recipe: one modern way to train every network, explained once.

Its ingredients, each a small piece a chapter can switch off to see what it buys:

- inputs standardised with the training set's pixel mean and standard deviation;
- augmentation on the device, one batched and seeded operation per batch: a random
  translation by up to ``translate`` pixels (the border filled with background) and a
  horizontal flip of half the images;
- label smoothing: the target puts ``1 - label_smoothing`` on the true class and
  spreads the rest evenly over all classes;
- SGD with Nesterov momentum (or AdamW), with weight decay on the weights of
  convolutions and dense layers only, not on biases or normalisation parameters;
- a learning rate changed after every batch: one-cycle (a warm-up to ``lr``, then a
  cosine decay to almost zero), warm-up then cosine, or constant;
- optionally, test-time augmentation: each test image scored with its mirror image;
- optionally, the network's weights in ``channels_last`` memory layout (channels
  innermost), for which oneDNN has faster convolutions on a CPU; the numbers it
  computes are the same up to rounding.

What a GPU needs, and a CPU run never gets unless it asks (``precision="auto"`` is the
default, ``compile`` is off):

- mixed precision on a CUDA GPU: the forward pass and the loss run under ``torch.autocast``
  in bfloat16 where the GPU has it (NVIDIA's Ampere and later), with no gradient scaling,
  since bfloat16 has float32's range; otherwise in float16, with a gradient scaler, since
  small gradients underflow float16's range. The weights and the optimiser stay in
  float32. Mixed precision brings the channels-last layout with it, the layout in which
  cuDNN's tensor-core convolutions read their inputs;
- optionally ``torch.compile``, off by default: compiling costs time at the start of a
  run, and what it saves on these networks has not been measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Recipe", "Augment", "augment_batch", "weight_decay_groups", "fit", "autocast_dtype"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("one-cycle", "cosine", "constant")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The dtype that ``torch.autocast`` runs in for ``precision`` on ``device``; None: float32 throughout.

    ``"auto"`` is mixed precision on a CUDA GPU (bfloat16 where the GPU supports it, else
    float16) and float32 on every other device. A named dtype is used on any device
    whose autocast supports it (on a CPU too, which the tests use).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "float32" or (precision == "auto" and device.type != "cuda"):
        return None
    # Native only: an older GPU (a T4) runs bfloat16 emulated, not on its tensor cores.
    native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if precision == "auto":
        return torch.bfloat16 if native_bf16 else torch.float16
    if not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision={precision!r}: PyTorch has no autocast on {device.type}; "
                         "use precision='float32' there")
    if precision == "bfloat16" and device.type == "cuda" and not native_bf16:
        raise ValueError("precision='bfloat16': this GPU has no native bfloat16 (only emulated); "
                         "use precision='float16' (with gradient scaling) or 'auto'")
    return getattr(torch, precision)


def augment_batch(X: torch.Tensor, generator: torch.Generator, *, translate: int = 2,
                  flip: bool = True, fill: float = 0.0) -> torch.Tensor:
    """Each image of ``X`` (N, C, H, W) shifted by its own random offset and mirrored at random.

    Offsets are drawn uniformly from ``-translate..translate`` in each direction;
    what is shifted in is ``fill``. One gather over the whole batch, no Python loop.
    """
    n, c, h, w = X.shape
    if translate:
        t = translate
        padded = nn.functional.pad(X, (t, t, t, t), value=fill)
        dy, dx = torch.randint(0, 2 * t + 1, (2, n, 1), generator=generator, device=X.device)
        rows = (dy + torch.arange(h, device=X.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx + torch.arange(w, device=X.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=X.device)[:, None, None, None]
        channel = torch.arange(c, device=X.device)[None, :, None, None]
        X = padded[batch, channel, rows, cols]
    if flip:
        mirrored = torch.rand(n, generator=generator, device=X.device) < 0.5
        X = torch.where(mirrored[:, None, None, None], X.flip(-1), X)
    return X


class Augment:
    """``augment_batch`` with its own generator, seeded once: a rerun draws the same shifts."""

    def __init__(self, seed: int, device: torch.device | str, *, translate: int = 2,
                 flip: bool = True, fill: float = 0.0) -> None:
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.translate, self.flip, self.fill = translate, flip, fill

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return augment_batch(X, self.generator, translate=self.translate, flip=self.flip, fill=self.fill)


def weight_decay_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights of convolutions and dense layers decay, the rest does not.

    Biases and the scale and shift of normalisation layers are one number per
    channel; pulling them towards zero only fights the normalisation.
    """
    decay, plain = [], []
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
            (decay if is_weight else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@dataclass(frozen=True)
class Recipe:
    """The settings of one training run under the course's recipe."""
    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"        # "sgd" (with Nesterov momentum) or "adamw"
    lr: float = 0.1               # the peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "one-cycle"   # "one-cycle", "cosine" (linear warm-up, cosine decay) or "constant"
    warmup: float = 0.25          # fraction of the steps spent warming up
    translate: int = 2            # pixels; 0 switches translation off
    flip: bool = True
    flip_test: bool = False       # test-time augmentation with mirror images
    channels_last: bool = False   # the network's weights in channels-last memory layout
    precision: str = "auto"       # "auto" (mixed on a CUDA GPU, else float32), "float32", "bfloat16", "float16"
    compile: bool = False         # torch.compile the network before training

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "translate"):
            value = getattr(self, name)
            if type(value) is not int or value < (0 if name == "translate" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'translate' else 'positive'} "
                                 f"int; got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.warmup < 1:
            raise ValueError("label_smoothing and warmup must lie in [0, 1)")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if type(self.compile) is not bool:
            raise ValueError(f"compile must be True or False; got {self.compile!r}")

    def settings(self) -> dict[str, Any]:
        """The settings as plain JSON values, for a run record."""
        return asdict(self)

    def table(self) -> str:
        """The settings as a two-column Markdown table.

        The memory layout, the precision and compilation change the speed more than the
        training, so their rows appear only when a recipe asks for something other than the
        default (channels-last weights, a named precision, compilation).
        """
        hidden = {"channels_last": False, "precision": "auto", "compile": False}
        rows = [f"| {name.replace('_', ' ')} | {value} |" for name, value in self.settings().items()
                if name not in hidden or value != hidden[name]]
        return "\n".join(["| setting | value |", "|---|---|", *rows])

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        groups = weight_decay_groups(net, self.weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0)
        return torch.optim.AdamW(groups, lr=self.lr, betas=(self.momentum, 0.999))

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """A per-batch schedule over ``epochs * steps_per_epoch`` steps."""
        total = self.epochs * steps_per_epoch
        warm = max(1, round(self.warmup * total)) if self.warmup else 0
        if self.schedule == "one-cycle" and total > 2:
            # OneCycleLR needs a warm-up of at least two steps and a decay of at least one: a run
            # of one or two steps (a smoke test) is left to the warm-up below.
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.lr, total_steps=total, pct_start=min(max(warm, 2), total - 1) / total,
                anneal_strategy="cos", cycle_momentum=False, div_factor=25.0, final_div_factor=1e4)

        def factor(step: int) -> float:
            if self.schedule == "constant":
                return min(1.0, (step + 1) / warm) if warm else 1.0
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def make_loss(self) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def make_augment(self, seed: int, device: torch.device | str, fill: float) -> Augment | None:
        if not self.translate and not self.flip:
            return None
        return Augment(seed, device, translate=self.translate, flip=self.flip, fill=fill)


def fit(net: nn.Module, splits, recipe: Recipe, *, seed: int = 0, verbose: bool = True):
    """Train ``net`` on ``splits`` (from ``load_splits``) under ``recipe``; returns the History.

    Every epoch is scored on the validation set; the test set once, at the end. On a CUDA
    GPU the default precision trains in mixed precision, which prints one line saying how;
    on a CPU nothing of it happens unless the recipe names a precision.
    """
    from .train import train_classifier

    device = torch.device(splits.device)
    dtype = autocast_dtype(recipe.precision, device)
    net.to(device)
    channels_last = recipe.channels_last or (dtype is not None and device.type == "cuda")
    if channels_last:
        # The layout of the weights decides that of the convolutions' outputs, and with
        # them the kernels that run; the inputs can stay as they are.
        net.to(memory_format=torch.channels_last)
    optimizer = recipe.make_optimizer(net)
    # float16 holds nothing below about 6e-8: the loss is scaled up before the backward pass
    # so that small gradients survive, and the gradients scaled down before the step.
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    model = torch.compile(net) if recipe.compile else net
    if verbose and (dtype is not None or recipe.compile):
        how = [f"autocast in {str(dtype).removeprefix('torch.')}"] if dtype is not None else []
        how += ["gradient scaling"] if scaler is not None else []
        how += ["channels-last weights"] if channels_last else []
        how += ["torch.compile"] if recipe.compile else []
        print(f"on {device.type}: " + ", ".join(how))
    return train_classifier(
        model, splits.train, splits.test, val_iter=splits.val, epochs=recipe.epochs,
        optimizer=optimizer, scheduler=recipe.make_scheduler(optimizer, len(splits.train)),
        loss_fn=recipe.make_loss(), augment=recipe.make_augment(seed, device, splits.background),
        flip_test=recipe.flip_test, verbose=verbose, autocast=dtype, scaler=scaler)

