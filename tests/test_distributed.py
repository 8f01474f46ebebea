"""Data-parallel training: two processes on the CPU (gloo, loopback only) train as one does.

The runs start the script below with ``python -m d2l_utils.torchrun`` on this machine;
they take a few seconds of training each and most of their time importing PyTorch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from d2l_utils import (DistributedRunError, Recipe, ShardedBatches, World, fit_data_parallel, init_distributed,
                       launch, load_splits, read_run, record_run, train_classifier)
from d2l_utils.data import Batches
from d2l_utils.torchrun import LOOPBACK, main as torchrun_main

# About how long this module takes on a 2-core machine shared with another pytest worker
# (four runs of two processes and one of one), measured on 2026-12-03; conftest.py starts
# the longest files first.
RUN_SECONDS = 110

# Ten steps of a global batch of 256 on 2,560 training images.
STEPS, BATCH = 10, 256
# How far the weights of the one- and two-process runs may differ after STEPS steps. The
# two processes compute the same gradient, but the sum over the batch is split in two and
# its halves averaged: the additions happen in another order, so the last bits of a
# float32 (about 1e-7 of the value) differ, and every step carries these differences into
# the next, where training amplifies them (chapter 17 shows them staying near the rounding
# for some steps, then jumping by orders of magnitude when a ReLU or a max-pooling window
# decides differently, and reaching the size of the weights within 60 steps): hence only
# ten steps.
# Measured: at most 1.1e-6 after 20 steps; the weights themselves move by more than 1e-2
# in ten steps (checked below), so a wrong split would be far outside.
WEIGHT_ATOL = 1e-4

SCRIPT = '''
import argparse, json
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from d2l_utils import Recipe, choose_profile, fit_data_parallel, init_distributed, load_splits, record_run


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


class Poisoned(nn.Module):
    """The network, with a NaN in every input of the batches this process sees."""
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, X):
        return self.net(X * float("nan")) if self.training else self.net(X)


@record
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--fail-rank", type=int, default=None)    # raises in its first step
    parser.add_argument("--poison-rank", type=int, default=None)  # its loss becomes NaN
    parser.add_argument("--errors", default=None)                 # each rank appends its error here
    args = parser.parse_args()
    profile = choose_profile("quick", "cpu", 0)
    world = init_distributed(profile.device)
    splits = load_splits(args.batch_size, seed=0, train_size=args.train_size, test_size=500, validation=500)
    recipe = Recipe(epochs=1, batch_size=args.batch_size, lr=0.1, translate=0, flip=False)
    torch.manual_seed(0)
    net = lenet()
    trained = Poisoned(net) if world.rank == args.poison_rank else net
    if world.rank == args.fail_rank:
        def fail(*_):
            raise RuntimeError(f"rank {world.rank} failed on purpose")
        trained.register_forward_hook(fail)
    try:
        history = fit_data_parallel(trained, splits, recipe, world, seed=0)
    except FloatingPointError as err:
        if args.errors:
            with open(args.errors, "a") as f:
                f.write(json.dumps([world.rank, str(err)]) + "\\n")
        raise
    if world.is_main:
        record_run(history, chapter="test", model=f"lenet-{world.world_size}", net=net, profile=profile,
                   hparams=recipe.settings(), world=world)
        torch.save(net.state_dict(), args.weights)
    world.close()


if __name__ == "__main__":
    main()
'''


def lenet() -> nn.Sequential:
    """The script's network, built here for its initial weights."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


@pytest.fixture
def script(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("D2L_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("D2L_RUN_OVERRIDES", raising=False)
    monkeypatch.setenv("D2L_THREADS", "1")
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


# --- sockets ---------------------------------------------------------------------------------

def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in found]
        found.update(children)
        frontier += children
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    return inodes


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp or tcp6 (hex, in the kernel's byte order) as text."""
    import ipaddress
    import socket

    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # Each 32-bit word is stored in the host's byte order (little-endian on x86 and ARM).
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return f"{ipaddress.ip_address(socket.inet_ntop(family, raw))}:{int(port, 16)}"


def listening_addresses(pids: set[int]) -> set[str]:
    """The addresses that these processes listen on for TCP connections."""
    inodes, found = _socket_inodes(pids), set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(_address(fields[1]))
    return found


def test_the_address_reader_reads_the_kernels_tables():
    assert _address("0100007F:1F90") == "127.0.0.1:8080"
    assert _address("00000000:0050") == "0.0.0.0:80"
    assert _address("00000000000000000000000001000000:0050") == "::1:80"
    assert _address("00000000000000000000000000000000:0050") == ":::80"


# --- one process and two --------------------------------------------------------------------------

def run_listening(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``command``, noting every address its processes listen on while it runs."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    seen, start = set(), time.monotonic()
    try:
        while process.poll() is None:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{command} did not finish in {timeout} s")
            seen |= listening_addresses(_descendants(process.pid))
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr), seen


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_two_processes_train_as_one_with_the_same_global_batch_listening_on_loopback_only(script, tmp_path):
    size = STEPS * BATCH
    one = subprocess.run([sys.executable, str(script), "--train-size", str(size), "--weights", str(tmp_path / "one.pt")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two, listening = run_listening(
        [sys.executable, "-m", "d2l_utils.torchrun", "--nproc-per-node", "2", str(script),
         "--train-size", str(size), "--weights", str(tmp_path / "two.pt")], timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    # The store and both processes' connections listened, all on the loopback address.
    assert len(listening) >= 3, f"fewer listening sockets than expected were seen: {listening}"
    hosts = {address.rsplit(":", 1)[0] for address in listening}
    assert hosts <= {LOOPBACK, "::1"}, f"listening beyond the loopback address: {sorted(listening)}"

    # Only rank 0 printed: one log, the same numbers as the single process's.
    assert two.stdout.count("train loss") == 2 and one.stdout.count("train loss") == 2
    one_run = read_run(tmp_path / "results" / "quick" / "cpu" / "test--lenet-1.json")
    two_run = read_run(tmp_path / "results" / "quick" / "cpu" / "test--lenet-2.json")
    assert (one_run["world_size"], one_run["backend"]) == (1, None)
    assert (two_run["world_size"], two_run["backend"]) == (2, "gloo")
    assert two_run["final"]["train_loss"] == pytest.approx(one_run["final"]["train_loss"], abs=1e-5)
    assert two_run["test_acc"] == pytest.approx(one_run["test_acc"], abs=2 / 500)

    torch.manual_seed(0)
    start = lenet().state_dict()
    w1, w2 = (torch.load(tmp_path / name) for name in ("one.pt", "two.pt"))
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 100 * WEIGHT_ATOL, f"the weights hardly moved ({moved:.2e}): the comparison shows nothing"
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=WEIGHT_ATOL, rtol=0, msg=lambda m: f"{name}: {m}")


# --- failures ----------------------------------------------------------------------------------

def test_a_failing_rank_fails_the_run_with_its_error_and_leaves_no_record(script, tmp_path):
    start = time.monotonic()
    with pytest.raises(DistributedRunError) as failure:
        launch(script, ["--train-size", "2560", "--weights", "two.pt", "--fail-rank", "1"], timeout=600,
               cwd=tmp_path)
    assert time.monotonic() - start < 600
    message = str(failure.value)
    assert "rank 1 failed on purpose" in message and "rank      : 1" in message, message
    results = tmp_path / "results"
    assert not (results.exists() and any(results.rglob("*"))), list(results.rglob("*"))
    assert not (tmp_path / "two.pt").exists()


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_error(script, tmp_path):
    errors = tmp_path / "errors.jsonl"
    with pytest.raises(DistributedRunError) as failure:
        launch(script, ["--train-size", "2560", "--weights", "two.pt", "--poison-rank", "1",
                        "--errors", str(errors)], timeout=600, cwd=tmp_path)
    assert "FloatingPointError: the training loss became nan in epoch 1" in str(failure.value)
    import json
    reported = sorted(json.loads(line) for line in errors.read_text().splitlines())
    assert [rank for rank, _ in reported] == [0, 1], reported
    assert reported[0][1] == reported[1][1], reported
    results = tmp_path / "results"
    assert not (results.exists() and any(results.rglob("*")))


# --- in one process ------------------------------------------------------------------------------

def tiny_batches(n=12, batch_size=4, seed=3):
    images = torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, 2, 2).contiguous()
    return Batches(images, torch.arange(n), batch_size, shuffle=True, seed=seed)


def test_the_shards_of_each_global_batch_are_the_batches_of_one_process():
    whole = [y for _, y in tiny_batches()]
    shards = [[y for _, y in ShardedBatches(tiny_batches(), rank, 2)] for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 3
    for step, y in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step], shards[1][step]]), y)
    assert ShardedBatches(tiny_batches(), 1, 2).num_examples == 6


def test_only_whole_global_batches_are_served():
    sharded = ShardedBatches(tiny_batches(n=14), 0, 2)
    assert len(sharded) == 3 and all(len(y) == 2 for _, y in sharded)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0, "world_size": 3}, "cannot be split evenly over 3 processes"),
    ({"rank": 2, "world_size": 2}, "rank must lie in 0..world_size - 1"),
])
def test_bad_shards_are_refused_with_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShardedBatches(tiny_batches(), **kwargs)


def test_unknown_backends_and_nccl_without_cuda_are_refused(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="backend must be one of 'gloo', 'nccl'"):
        init_distributed("cpu", backend="mpi")
    with pytest.raises(ValueError, match="nccl backend needs CUDA"):
        init_distributed("cpu", backend="nccl")
    world = init_distributed("cpu")  # not started by torchrun: one process of its own
    assert (world.rank, world.world_size, world.backend, world.is_main) == (0, 1, None, True)
    assert torch.equal(world.sum(torch.tensor([1.0, 2.0])), torch.tensor([1.0, 2.0]))


def test_a_half_set_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(RuntimeError, match="start the script with torchrun"):
        init_distributed("cpu")


def test_the_launcher_refuses_the_options_it_sets_itself():
    with pytest.raises(SystemExit, match="sets --master-port itself"):
        torchrun_main(["--nproc-per-node", "2", "--master-port=29500", "train.py"])
    with pytest.raises(SystemExit, match="for several machines start the run with torchrun"):
        torchrun_main(["--nnodes", "2", "train.py"])


def test_a_missing_script_or_a_bad_process_count_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="write it first"):
        launch(tmp_path / "missing.py")
    with pytest.raises(ValueError, match="processes must be a positive int"):
        launch(tmp_path / "missing.py", processes=0)


def test_the_epoch_sums_go_through_reduce(one_thread):
    """What each process counted is replaced by what ``reduce`` returns: here, twice as much data."""
    torch.manual_seed(0)
    X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    data = [(X, y)]
    net = nn.Linear(3, 2)
    history = train_classifier(net, data, data, epochs=1, optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                               verbose=False, reduce=lambda t: 2 * t)
    alone = train_classifier(net, data, data, epochs=1, optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
                             verbose=False)
    assert history.final.train_loss == pytest.approx(alone.final.train_loss)  # (2 sum) / (2 n)
    assert history.final.examples_per_sec == pytest.approx(2 * 8 / history.final.seconds)


def test_fit_data_parallel_needs_the_recipes_global_batch(one_thread):
    splits = load_splits(64, train_size=256, test_size=100, validation=100)
    world = World(0, 1, 0, None, torch.device("cpu"))
    with pytest.raises(ValueError, match="load them with load_splits"):
        fit_data_parallel(lenet(), splits, Recipe(epochs=1, batch_size=128), world)


def test_the_record_of_a_data_parallel_run_names_its_processes_and_backend(tmp_path):
    from d2l_utils import EpochStats, History, choose_profile

    history = History([EpochStats(1, 0.5, 0.8, 0.7, 1.0, 100.0)], input_shape=(3,))
    world = World(0, 4, 0, "gloo", torch.device("cpu"))
    path = record_run(history, chapter="c", model="m", net=nn.Linear(3, 2), profile=choose_profile("quick", "cpu"),
                      hparams={}, directory=tmp_path, world=world)
    run = read_run(path)
    assert (run["world_size"], run["backend"]) == (4, "gloo")
