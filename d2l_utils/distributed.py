"""Data-parallel training: one process per device, each on its shard of every batch.

A script calls ``init_distributed`` once (it reads what ``torchrun`` tells each process:
its rank, the number of processes, its device on the machine), loads the data as usual,
and trains with ``fit_data_parallel`` instead of ``fit``. Every process then

- draws the same seeded order of the training images each epoch and takes its own
  slice of every global batch (``ShardedBatches``): the global batch divided by the
  number of processes;
- computes the gradient of its slice, which ``DistributedDataParallel`` averages over
  the processes while the backward pass runs, so that every process takes the same
  step, the step of the whole global batch;
- adds its loss, correct predictions and example count to those of the others at the
  end of each epoch (``all_reduce``), so that the epoch's numbers are those of all the
  data and a non-finite loss stops every process with the same error.

Only the first process (rank 0) prints; the script writes the run record there.
``launch`` starts such a script on this machine and waits for it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from .data import Batches

__all__ = ["BACKENDS", "World", "ShardedBatches", "DistributedRunError", "choose_backend",
           "init_distributed", "fit_data_parallel", "launch"]

BACKENDS = ("gloo", "nccl")


def choose_backend(device: torch.device | str) -> str:
    """``nccl`` (NVIDIA's collective library) for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run."""
    rank: int          # 0 .. world_size - 1, over all machines
    world_size: int    # the number of processes
    local_rank: int    # the process's number on its machine: it picks the GPU
    backend: str | None  # None: a single process started without torchrun
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that prints and writes the record."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` added up over every process (every process gets the total)."""
        if self.distributed:
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def close(self) -> None:
        """Leave the process group (at the end of a script)."""
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _env_int(name: str) -> int:
    text = os.environ[name]
    if not text.isdigit():
        raise ValueError(f"{name} must be a non-negative integer (torchrun sets it); got {text!r}")
    return int(text)


def init_distributed(device: torch.device | str = "cpu", backend: str | None = None,
                     timeout: float = 600.0) -> World:
    """Join the run that ``torchrun`` started, or run alone when started without it.

    ``device`` is the profile's device: a CUDA process takes the GPU of its local rank.
    ``backend`` defaults to ``choose_backend(device)``. ``timeout`` (seconds) bounds how
    long a collective operation waits for the other processes.
    """
    device = torch.device(device)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))} or None "
                         f"(nccl on CUDA, gloo otherwise); got {backend!r}")
    backend = backend or choose_backend(device)
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"the nccl backend needs CUDA devices, not {device.type!r}: use gloo on the CPU")
    if "RANK" not in os.environ:  # started as a plain script: one process, no process group
        return World(0, 1, 0, None, device)
    missing = [name for name in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise RuntimeError(f"RANK is set but {', '.join(missing)} are not: start the script with "
                           "torchrun (or python -m d2l_utils.torchrun), which sets them all")
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise RuntimeError(f"process {local_rank} of this machine has no GPU of its own (the machine "
                               f"has {count}): start torchrun with --nproc-per-node {count} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend, rank=rank, world_size=world_size,
                                         timeout=dt.timedelta(seconds=timeout))
    return World(rank, world_size, local_rank, backend, device)


class ShardedBatches:
    """One process's share of the global batches of ``batches`` (a shuffled ``Batches``).

    Every process draws the same order from its copy of the batches' generator (seeded
    alike in every process) and takes its slice of each global batch: rank ``r`` of
    ``w`` gets images ``r b/w`` to ``(r + 1) b/w - 1`` of a batch of ``b``. Only whole
    global batches are served, so that every slice has ``b/w`` images and every
    process takes the same number of steps; the few images left over change from epoch
    to epoch.
    """

    def __init__(self, batches: Batches, rank: int = 0, world_size: int = 1) -> None:
        if type(world_size) is not int or world_size < 1 or type(rank) is not int or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in 0..world_size - 1 and world_size be positive; "
                             f"got rank {rank!r} of {world_size!r}")
        if batches.batch_size % world_size:
            raise ValueError(f"a global batch of {batches.batch_size} cannot be split evenly over "
                             f"{world_size} processes: choose a batch size that is a multiple of {world_size}")
        if batches.num_examples < batches.batch_size:
            raise ValueError(f"{batches.num_examples} training images do not fill one global batch of "
                             f"{batches.batch_size}: choose a smaller batch size")
        self.batches, self.rank, self.world_size = batches, rank, world_size
        self.local_batch = batches.batch_size // world_size

    def __len__(self) -> int:
        return self.batches.num_examples // self.batches.batch_size

    @property
    def num_examples(self) -> int:
        """Images this process trains on per epoch."""
        return len(self) * self.local_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        source = self.batches
        n = source.num_examples
        order = torch.randperm(n, generator=source.generator) if source.shuffle else torch.arange(n)
        order = order.to(source.labels.device)
        for step in range(len(self)):
            start = step * source.batch_size + self.rank * self.local_batch
            index = order[start:start + self.local_batch]
            yield source._transform(source.images[index]), source.labels[index]


def fit_data_parallel(net: nn.Module, splits, recipe, world: World, *, seed: int = 0,
                      verbose: bool = True):
    """``fit`` in every process of a data-parallel run; returns the History (the same in all).

    ``splits`` comes from ``load_splits(recipe.batch_size, device=world.device, seed=seed)``,
    called alike in every process; ``recipe.batch_size`` is the global batch. Every
    process evaluates the whole validation and test sets (the weights are the same in
    all of them); only rank 0 prints.
    """
    from .recipe import Recipe
    from .train import train_classifier

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe; got {type(recipe).__name__}")
    if splits.train.batch_size != recipe.batch_size:
        raise ValueError(f"the splits serve batches of {splits.train.batch_size} but the recipe's global "
                         f"batch is {recipe.batch_size}: load them with load_splits(recipe.batch_size, ...)")
    train = ShardedBatches(splits.train, world.rank, world.world_size)
    device = world.device
    net.to(device)
    if recipe.channels_last:
        net.to(memory_format=torch.channels_last)
    model = net
    if world.distributed:
        # Copies rank 0's weights to every process, then averages the gradients in buckets
        # while the backward pass is still running.
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = recipe.make_optimizer(net)
    # Each process draws its own augmentations: with one seed they would shift the images
    # of every slice alike.
    augment = recipe.make_augment(seed + world.rank, device, splits.background)
    return train_classifier(
        model, train, splits.test, val_iter=splits.val, epochs=recipe.epochs, optimizer=optimizer,
        scheduler=recipe.make_scheduler(optimizer, len(train)), loss_fn=recipe.make_loss(),
        augment=augment, flip_test=recipe.flip_test, verbose=verbose and world.is_main,
        reduce=world.sum if world.distributed else None)


class DistributedRunError(RuntimeError):
    """A process of a run started by ``launch`` failed; the message holds its error."""


def launch(script: str | os.PathLike, args: list[str] | tuple[str, ...] = (), *, processes: int = 2,
           timeout: float | None = 600, cwd: str | os.PathLike | None = None) -> str:
    """Run ``script`` in ``processes`` processes on this machine (``python -m d2l_utils.torchrun``,
    every socket on the loopback address) and return what they printed.

    When a process fails, torchrun stops the others; the run's error output (with the
    failing rank's traceback) becomes a ``DistributedRunError``. ``timeout`` (seconds)
    bounds the whole run.
    """
    if type(processes) is not int or processes < 1:
        raise ValueError(f"processes must be a positive int; got {processes!r}")
    script = Path(script)
    if not script.is_file():
        raise FileNotFoundError(f"no script {script}: write it first")
    command = [sys.executable, "-m", "d2l_utils.torchrun", "--nproc-per-node", str(processes),
               str(script), *map(str, args)]
    # A session of its own, so that a run past its time is stopped with every process it started.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as err:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise DistributedRunError(f"{script.name} in {processes} processes did not finish in "
                                  f"{timeout:.0f} s") from err
    except BaseException:  # interrupted: leave no process behind
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    done = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    if done.returncode != 0:
        raise DistributedRunError(f"{script.name} in {processes} processes failed (exit status "
                                  f"{done.returncode}):\n{_failure(done.stderr)}")
    return done.stdout


def _failure(stderr: str, lines: int = 40) -> str:
    """The part of torchrun's error output that names the first failing rank and holds its
    traceback ("Root Cause"), else the output's last lines."""
    text = stderr.strip()
    if "Root Cause" in text:
        return text[text.rindex("Root Cause"):]
    return "\n".join(text.splitlines()[-lines:])
