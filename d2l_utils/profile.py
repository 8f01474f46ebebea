"""Device and profile choice, seeding and deterministic settings.

A notebook's ``parameters`` cell holds plain values (papermill can override
them); ``choose_profile`` turns them into one small ``Profile`` that the rest
of the notebook reads. Nothing here is hidden global state: the two
environment variables consulted only fill in defaults, ``D2L_DEVICE`` for
``DEVICE="auto"`` and ``D2L_THREADS`` for ``THREADS=None``.
"""

from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PROFILES", "DEVICES", "THREADS_ENV", "Profile", "choose_device", "choose_profile",
           "cpu_model", "device_name", "seed_everything"]

PROFILES = ("quick", "full")
DEVICES = ("auto", "cpu", "cuda", "mps")
THREADS_ENV = "D2L_THREADS"


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; a named device must exist."""
    if not isinstance(name, str) or name not in DEVICES:
        raise ValueError(f"DEVICE must be one of {', '.join(map(repr, DEVICES))}; got {name!r}")
    if name == "auto":
        name = os.environ.get("D2L_DEVICE", "auto")
        if name not in DEVICES:
            raise ValueError(f"D2L_DEVICE must be one of {', '.join(DEVICES)}; got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE='cuda' was asked for but PyTorch sees no CUDA GPU. "
                           "Use DEVICE='auto' or 'cpu', or in Colab choose "
                           "Runtime > Change runtime type > GPU.")
    if name == "mps" and not _mps_available():
        raise RuntimeError("DEVICE='mps' was asked for but this PyTorch has no MPS "
                           "device. Use DEVICE='auto' or 'cpu'.")
    return torch.device(name)


def device_name(device: torch.device | str) -> str:
    """A human name for the hardware: the GPU's model, or the CPU's and its thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple {platform.machine()} (MPS)"
    model = cpu_model()
    return f"{model}, {torch.get_num_threads()} threads"


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and PyTorch on every device."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed)
    except ImportError:
        pass


def _deterministic(device: torch.device) -> None:
    # cuBLAS needs this set before its first use to be reproducible.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: a few CUDA kernels (e.g. some pooling backward passes) have no
    # deterministic version; they warn instead of stopping the chapter.
    torch.use_deterministic_algorithms(True, warn_only=True)
    # With deterministic algorithms on, PyTorch also fills every tensor it allocates with NaN,
    # so that a program reading memory it never wrote fails the same way each time. No code
    # of this course reads such memory, so the filling only costs time: 7 to 10% of a training
    # step of chapter 13's DenseNet on a CPU thread. The kernels chosen stay the same.
    torch.utils.deterministic.fill_uninitialized_memory = False


@dataclass(frozen=True)
class Profile:
    """Which recipe a notebook runs (``quick`` for a CPU, ``full`` for a GPU), where, and its seed."""
    name: str
    device: torch.device
    seed: int = 0
    threads: int | None = None  # CPU threads PyTorch was set to; None: left at its default

    def pick(self, name: str, value: Any, *, quick: Any, full: Any) -> Any:
        """``value`` if the notebook set it, else this profile's choice; checks its type.

        ``name`` is the parameter's name, used in the error message.
        """
        default = quick if self.name == "quick" else full
        if value is None:
            return default
        expected = type(quick if quick is not None else full)
        if expected is float and type(value) is int:
            value = float(value)
        if type(value) is not expected:
            raise TypeError(f"{name} must be {expected.__name__} (or None for the profile's "
                            f"{default!r}); got {type(value).__name__} {value!r}")
        return value

    def __str__(self) -> str:
        # The thread count is left out: it changes the last digits of a training log, not
        # what the run is, and a page's stored output must not depend on it (see THREADS_ENV).
        return f"profile {self.name!r} on {self.device.type} (seed {self.seed})"


def choose_profile(profile: str | None = None, device: str = "auto", seed: int = 0,
                   threads: int | None = None) -> Profile:
    """Check the notebook's parameters, pick the device, seed everything.

    ``profile=None`` means ``full`` on a GPU and ``quick`` otherwise.

    ``threads`` sets PyTorch's CPU threads. ``None`` takes the environment
    variable ``D2L_THREADS`` if it is set, else one thread for the quick profile
    on a CPU and PyTorch's default otherwise. One thread makes a quick run
    independent of the machine's core count (a sum split over another number
    of threads is rounded differently, and deep networks amplify that), but not
    bit-identical across processors: PyTorch picks its kernels by instruction
    set, so training numbers are compared within measured tolerances.
    """
    if profile is not None and (not isinstance(profile, str) or profile not in PROFILES):
        raise ValueError(f"PROFILE must be one of {', '.join(map(repr, PROFILES))} or None "
                         f"(chosen from the device); got {profile!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"SEED must be an int; got {type(seed).__name__} {seed!r}")
    if threads is not None and (type(threads) is not int or threads < 1):
        raise TypeError(f"THREADS must be a positive int or None (one thread for quick on a "
                        f"CPU, else PyTorch's default); got {type(threads).__name__} {threads!r}")
    if threads is None and os.environ.get(THREADS_ENV):
        text = os.environ[THREADS_ENV]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer (CPU threads); got {text!r}. "
                             f"Unset it to use the profile's choice.")
        threads = int(text)
    chosen = choose_device(device)
    if profile is None:
        profile = "quick" if chosen.type == "cpu" else "full"
    if threads is None and profile == "quick" and chosen.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    _deterministic(chosen)
    seed_everything(seed)
    return Profile(profile, chosen, seed, threads)
