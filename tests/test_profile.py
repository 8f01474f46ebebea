"""Device and profile choice, parameter checks and seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from d2l_utils import Profile, choose_device, choose_profile, device_name, seed_everything
from d2l_utils import profile as d2l_profile

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def hardware(monkeypatch):
    """A machine with neither CUDA nor MPS and no D2L_DEVICE, whatever this one has."""
    monkeypatch.delenv("D2L_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(d2l_profile, "_mps_available", lambda: False)
    return monkeypatch


@pytest.fixture(autouse=True)
def restore_global_settings(monkeypatch):
    """choose_profile switches on deterministic algorithms; put back what was there."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    fill = torch.utils.deterministic.fill_uninitialized_memory
    threads = torch.get_num_threads()
    yield
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


# --- choose_device ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpu", "CPU", "", None, 0])
def test_unknown_device_names_are_rejected_with_the_choices(name):
    with pytest.raises(ValueError) as err:
        choose_device(name)
    message = str(err.value)
    assert "DEVICE" in message
    assert all(repr(choice) in message for choice in ("auto", "cpu", "cuda", "mps"))


def test_cuda_asked_for_but_absent_says_what_to_do():
    with pytest.raises(RuntimeError) as err:
        choose_device("cuda")
    message = str(err.value)
    assert "CUDA" in message and "'auto'" in message and "'cpu'" in message
    assert "Change runtime type" in message


def test_mps_asked_for_but_absent_says_what_to_do():
    with pytest.raises(RuntimeError) as err:
        choose_device("mps")
    assert "MPS" in str(err.value) and "'cpu'" in str(err.value)


def test_auto_prefers_cuda_then_mps_then_cpu(hardware):
    assert choose_device("auto") == CPU
    hardware.setattr(d2l_profile, "_mps_available", lambda: True)
    assert choose_device("auto") == torch.device("mps")
    hardware.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")
    assert choose_device() == torch.device("cuda")


def test_named_devices_that_exist_are_returned(hardware):
    hardware.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("cpu") == CPU
    assert choose_device("cuda") == torch.device("cuda")


def test_d2l_device_fills_in_auto_only(hardware):
    hardware.setattr(torch.cuda, "is_available", lambda: True)
    hardware.setenv("D2L_DEVICE", "cpu")
    assert choose_device("auto") == CPU
    assert choose_device("cuda") == torch.device("cuda")  # a notebook's explicit choice wins
    hardware.setenv("D2L_DEVICE", "auto")
    assert choose_device("auto") == torch.device("cuda")


def test_d2l_device_asking_for_an_absent_gpu_fails_like_an_explicit_choice(hardware):
    hardware.setenv("D2L_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA"):
        choose_device("auto")


def test_bad_d2l_device_is_named_in_the_error(hardware):
    hardware.setenv("D2L_DEVICE", "tpu")
    with pytest.raises(ValueError, match="D2L_DEVICE.*'tpu'"):
        choose_device("auto")
    assert choose_device("cpu") == CPU  # not consulted when a device is named


def test_device_name_of_the_cpu_gives_the_thread_count():
    assert device_name("cpu").endswith(f", {torch.get_num_threads()} threads")
    assert device_name(CPU) == device_name("cpu")


# --- choose_profile ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fast", "Quick", "", 1])
def test_unknown_profile_is_rejected_with_the_choices(name):
    with pytest.raises(ValueError) as err:
        choose_profile(name)
    message = str(err.value)
    assert "PROFILE" in message and "'quick'" in message and "'full'" in message


@pytest.mark.parametrize("seed", ["0", 1.0, True, None])
def test_seed_must_be_an_int(seed):
    with pytest.raises(TypeError, match="SEED"):
        choose_profile("quick", seed=seed)


def test_no_profile_means_quick_on_the_cpu():
    profile = choose_profile(None, "auto", seed=4)
    assert profile == Profile("quick", CPU, 4, threads=1)
    assert str(profile) == "profile 'quick' on cpu (seed 4)"


# --- threads ----------------------------------------------------------------------------------

def test_quick_on_a_cpu_runs_on_one_thread():
    torch.set_num_threads(2)
    profile = choose_profile("quick", "cpu")
    assert profile.threads == 1 and torch.get_num_threads() == 1


def test_full_on_a_cpu_keeps_pytorchs_threads():
    torch.set_num_threads(2)
    profile = choose_profile("full", "cpu")
    assert profile.threads is None and torch.get_num_threads() == 2
    assert str(profile) == "profile 'full' on cpu (seed 0)"


def test_quick_on_a_gpu_keeps_pytorchs_threads(hardware):
    hardware.setattr(torch.cuda, "is_available", lambda: True)
    torch.set_num_threads(2)
    profile = choose_profile("quick", "cuda")
    assert profile.threads is None and torch.get_num_threads() == 2


def test_threads_asked_for_are_set_but_not_printed():
    """A stored output must not change with the thread count an instructor runs it on."""
    torch.set_num_threads(1)
    profile = choose_profile("quick", "cpu", threads=2)
    assert profile.threads == 2 and torch.get_num_threads() == 2
    assert str(profile) == "profile 'quick' on cpu (seed 0)"


def test_the_environment_sets_the_threads_of_a_notebook_that_leaves_them_to_the_profile(monkeypatch):
    monkeypatch.setenv("D2L_THREADS", "2")
    torch.set_num_threads(1)
    assert choose_profile("quick", "cpu").threads == 2 and torch.get_num_threads() == 2
    assert choose_profile("quick", "cpu", threads=1).threads == 1  # the notebook's own value wins


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_in_the_environment_is_refused_with_its_name(monkeypatch, text):
    monkeypatch.setenv("D2L_THREADS", text)
    torch.set_num_threads(2)
    with pytest.raises(ValueError, match="D2L_THREADS must be a positive integer"):
        choose_profile("quick", "cpu")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads", [0, -1, 1.0, "2", True])
def test_threads_must_be_a_positive_int_and_nothing_changes_otherwise(threads):
    torch.set_num_threads(2)
    with pytest.raises(TypeError, match="THREADS must be a positive int or None"):
        choose_profile("quick", "cpu", threads=threads)
    assert torch.get_num_threads() == 2


def test_no_profile_means_full_on_a_gpu(hardware):
    hardware.setattr(torch.cuda, "is_available", lambda: True)
    profile = choose_profile(None, "auto")
    assert (profile.name, profile.device.type) == ("full", "cuda")


def test_a_named_profile_is_kept_on_any_device():
    assert choose_profile("full", "cpu").name == "full"
    assert choose_profile("quick").name == "quick"


def test_choose_profile_switches_on_deterministic_algorithms():
    torch.use_deterministic_algorithms(False)
    choose_profile("quick", "cpu")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_choose_profile_does_not_fill_fresh_memory():
    torch.utils.deterministic.fill_uninitialized_memory = True
    choose_profile("quick", "cpu")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.utils.deterministic.fill_uninitialized_memory


def _train_a_few_steps(fill: bool) -> list[torch.Tensor]:
    """Three SGD steps of a small network with concatenation, BN and channels-last weights."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    torch.manual_seed(0)
    conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
    rest = torch.nn.Sequential(torch.nn.BatchNorm2d(9), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(9, 6, 3, stride=2),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 10))
    params = list(conv1.parameters()) + list(rest.parameters())
    for module in (conv1, rest):
        module.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    X, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(rest(torch.cat((X, conv1(X)), dim=1)), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_training_is_the_same_whether_fresh_memory_is_filled_or_not():
    filled, unfilled = _train_a_few_steps(True), _train_a_few_steps(False)
    assert all(torch.equal(a, b) for a, b in zip(filled, unfilled))
    torch.manual_seed(0)
    assert not torch.equal(filled[0], torch.nn.Conv2d(1, 8, 3, padding=1).weight)  # the steps changed it


def test_choose_profile_seeds_torch():
    choose_profile("quick", "cpu", seed=11)
    first = torch.randn(5)
    choose_profile("quick", "cpu", seed=11)
    assert torch.equal(torch.randn(5), first)
    choose_profile("quick", "cpu", seed=12)
    assert not torch.equal(torch.randn(5), first)


def test_seed_everything_repeats_torch_python_and_numpy():
    def draw():
        return torch.randn(5), random.random(), np.random.rand(3)

    seed_everything(3)
    t1, p1, n1 = draw()
    seed_everything(3)
    t2, p2, n2 = draw()
    assert torch.equal(t1, t2) and p1 == p2 and np.array_equal(n1, n2)
    seed_everything(4)
    t3, p3, _ = draw()
    assert not torch.equal(t1, t3) and p1 != p3


# --- Profile.pick -----------------------------------------------------------------------------

QUICK, FULL = Profile("quick", CPU), Profile("full", CPU)


def test_pick_returns_the_profiles_default_when_the_notebook_leaves_none():
    assert QUICK.pick("EPOCHS", None, quick=10, full=20) == 10
    assert FULL.pick("EPOCHS", None, quick=10, full=20) == 20
    assert QUICK.pick("RESIZE", None, quick=None, full=224) is None


def test_pick_returns_the_notebooks_value():
    assert QUICK.pick("EPOCHS", 3, quick=10, full=20) == 3
    assert FULL.pick("LR", 0.5, quick=0.1, full=0.9) == 0.5
    assert QUICK.pick("RESIZE", 96, quick=None, full=224) == 96


def test_pick_turns_an_int_into_a_float_where_a_float_is_expected():
    lr = QUICK.pick("LR", 1, quick=0.1, full=0.9)
    assert lr == 1.0 and type(lr) is float


@pytest.mark.parametrize("value", ["10", True, 2.0, 2.5, [10]],
                         ids=["str", "bool", "whole-float", "float", "list"])
def test_pick_rejects_other_types_for_an_int_naming_the_parameter(value):
    with pytest.raises(TypeError) as err:
        QUICK.pick("EPOCHS", value, quick=10, full=20)
    message = str(err.value)
    assert message.startswith("EPOCHS must be int")
    assert type(value).__name__ in message and repr(value) in message


def test_pick_rejects_a_string_for_a_float():
    with pytest.raises(TypeError, match="LR must be float"):
        FULL.pick("LR", "0.1", quick=0.1, full=0.9)


def test_profile_is_immutable():
    with pytest.raises(AttributeError):
        QUICK.name = "full"
