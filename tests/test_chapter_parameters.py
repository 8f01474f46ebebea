"""Parameters of one chapter are checked when its notebook starts, with an error that says what to pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(autouse=True)
def restore_global_settings(monkeypatch):
    """The settings cell calls choose_profile, which sets threads and deterministic algorithms."""
    for name in ("D2L_DEVICE", "D2L_THREADS", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def run_settings(notebook: str, profile: str = "quick", **parameters) -> dict:
    """Run a notebook's parameters cell, then ``parameters`` as papermill injects them, then the
    settings cell after it, on the CPU; return the names it defines."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    i = next(i for i, cell in enumerate(cells) if "parameters" in cell["metadata"].get("tags", []))
    namespace = {}
    exec("".join(cells[i]["source"]), namespace)
    namespace.update(parameters, PROFILE=profile, DEVICE="cpu")
    exec("".join(cells[i + 1]["source"]), namespace)
    return namespace


@pytest.mark.parametrize("blocks", ["2,6,12", "2-6-", "0-6-12", "two"])
def test_densenet_blocks_in_another_form_are_refused_with_an_example(blocks):
    with pytest.raises(ValueError, match='joined by "-", such as "1-6-12"'):
        run_settings("13_densenet.ipynb", BLOCKS=blocks)


def test_densenet_blocks_must_be_a_string():
    with pytest.raises(TypeError, match="BLOCKS must be str"):
        run_settings("13_densenet.ipynb", BLOCKS=3)


@pytest.mark.parametrize("blocks, expected", [(None, "1-6-12"), ("3-3-3", "3-3-3")])
def test_densenet_blocks_default_to_the_chapters_network(blocks, expected):
    assert run_settings("13_densenet.ipynb", BLOCKS=blocks)["dense_blocks"] == expected


def test_densenet_full_profile_trains_the_chapters_network():
    settings = run_settings("13_densenet.ipynb", profile="full")
    assert settings["dense_blocks"] == "4-4-4-4"
    assert settings["convs_per_block"] == (4, 4, 4, 4)


def test_densenet_blocks_are_refused_by_the_full_profile():
    with pytest.raises(ValueError, match="the full profile trains the chapter's DenseNet"):
        run_settings("13_densenet.ipynb", profile="full", BLOCKS="3-3-3")


@pytest.mark.parametrize("bottleneck, expected", [(None, 2), (0, 0), (4, 4)])
def test_densenet_bottleneck_defaults_to_twice_the_growth_rate(bottleneck, expected):
    assert run_settings("13_densenet.ipynb", BOTTLENECK=bottleneck)["bottleneck"] == expected


def test_densenet_bottleneck_must_be_a_whole_number():
    with pytest.raises(TypeError, match="BOTTLENECK must be int"):
        run_settings("13_densenet.ipynb", BOTTLENECK=2.0)


def test_densenet_negative_bottleneck_is_refused_with_an_example():
    with pytest.raises(ValueError, match="BOTTLENECK must be 0 .* such as 4; got -2"):
        run_settings("13_densenet.ipynb", BOTTLENECK=-2)


def test_densenet_bottleneck_is_refused_by_the_full_profile():
    with pytest.raises(ValueError, match="the full profile trains the chapter's DenseNet, without bottlenecks"):
        run_settings("13_densenet.ipynb", profile="full", BOTTLENECK=4)
    assert run_settings("13_densenet.ipynb", profile="full")["bottleneck"] == 0


@pytest.mark.parametrize("notebook", ["10_googlenet.ipynb", "13_densenet.ipynb"])
@pytest.mark.parametrize("stem, expected", [(None, "stride"), ("stride", "stride"), ("pool", "pool")])
def test_small_network_stem_defaults_to_a_strided_convolution(notebook, stem, expected):
    assert run_settings(notebook, STEM=stem)["stem"] == expected


@pytest.mark.parametrize("notebook", ["10_googlenet.ipynb", "13_densenet.ipynb"])
@pytest.mark.parametrize("stem", ["max", "Pool", ""])
def test_small_network_unknown_stem_is_refused_with_the_known_ones(notebook, stem):
    with pytest.raises(ValueError, match=f'STEM must be "stride" .* or "pool" .*; got {stem!r}'):
        run_settings(notebook, STEM=stem)


@pytest.mark.parametrize("dropout", ["0.4", True])
def test_googlenet_dropout_must_be_a_number(dropout):
    with pytest.raises(TypeError, match="DROPOUT must be float"):
        run_settings("10_googlenet.ipynb", DROPOUT=dropout)


@pytest.mark.parametrize("dropout, expected", [(None, 0.0), (0, 0.0), (0.4, 0.4)])
def test_googlenet_dropout_defaults_to_none_and_accepts_an_int(dropout, expected):
    assert run_settings("10_googlenet.ipynb", DROPOUT=dropout)["dropout"] == expected


@pytest.mark.parametrize("change", ["no augmentation", "compiled", 3])
def test_training_fast_refuses_an_unknown_change_and_lists_the_known_ones(change):
    with pytest.raises(ValueError, match="CHANGE must be None or one of 'no-augmentation', .*'compile'"):
        run_settings("15_training_fast.ipynb", CHANGE=change)


@pytest.mark.parametrize("change, setting, expected", [
    (None, "channels_last", True), ("channels-first", "channels_last", False), ("compile", "compile", True),
    ("no-augmentation", "flip_test", False), ("constant-lr", "schedule", "constant")])
def test_training_fast_changes_one_setting_of_the_recipe(change, setting, expected):
    recipe = run_settings("15_training_fast.ipynb", CHANGE=change)["recipe"]
    assert getattr(recipe, setting) == expected
    assert (recipe.epochs, recipe.batch_size, recipe.lr) == (4, 128, 0.1)


@pytest.mark.parametrize("blocks, shortcuts, model", [(None, True, "resnet14"), (5, True, "resnet32"),
                                                      (1, False, "plain8"), (None, False, "plain14")])
def test_resnet_depth_and_shortcuts_name_the_network_trained(blocks, shortcuts, model):
    settings = run_settings("12_resnet.ipynb", BLOCKS=blocks, SHORTCUTS=shortcuts)
    assert settings["model"] == model
    assert settings["blocks"] == (blocks or 2)


@pytest.mark.parametrize("blocks, error, message", [(0, ValueError, "BLOCKS must be at least 1"),
                                                    ("5", TypeError, "BLOCKS must be int"),
                                                    (2.0, TypeError, "BLOCKS must be int")])
def test_resnet_blocks_must_be_a_positive_int(blocks, error, message):
    with pytest.raises(error, match=message):
        run_settings("12_resnet.ipynb", BLOCKS=blocks)


@pytest.mark.parametrize("shortcuts", ["False", 0, None])
def test_resnet_shortcuts_must_be_a_bool(shortcuts):
    with pytest.raises(TypeError, match="SHORTCUTS must be True or False"):
        run_settings("12_resnet.ipynb", SHORTCUTS=shortcuts)


@pytest.mark.parametrize("parameters", [{"BLOCKS": 3}, {"SHORTCUTS": False}])
def test_resnet_depth_and_shortcuts_are_refused_by_the_full_profile(parameters):
    with pytest.raises(ValueError, match="the full profile trains ResNet-18"):
        run_settings("12_resnet.ipynb", profile="full", **parameters)


def test_resnet_full_profile_trains_resnet18():
    assert run_settings("12_resnet.ipynb", profile="full")["model"] == "resnet18"


@pytest.mark.parametrize("block, expected", [(None, "convnext"), ("resnet", "resnet"), ("micro", "micro")])
def test_modern_block_defaults_to_convnext_and_names_a_step(block, expected):
    assert run_settings("14_modern_convolutions.ipynb", BLOCK=block)["block_step"] == expected


def test_modern_block_refuses_an_unknown_step_and_lists_the_steps():
    with pytest.raises(ValueError, match="BLOCK must be None or one of 'resnet', 'inverted', .*'convnext'"):
        run_settings("14_modern_convolutions.ipynb", BLOCK="vit")


@pytest.mark.parametrize("notebook, name, value", [("10_googlenet.ipynb", "STEM", 2),
                                                    ("13_densenet.ipynb", "STEM", 2),
                                                    ("14_modern_convolutions.ipynb", "BLOCK", 1)])
def test_a_choice_of_the_small_network_must_be_a_string(notebook, name, value):
    with pytest.raises(TypeError, match=f"{name} must be str"):
        run_settings(notebook, **{name: value})


@pytest.mark.parametrize("notebook, name, value, trained", [
    ("10_googlenet.ipynb", "STEM", "pool", "the chapter's GoogLeNet, with the paper's stem"),
    ("13_densenet.ipynb", "STEM", "pool", "the chapter's DenseNet, with ResNet's stem"),
    ("14_modern_convolutions.ipynb", "BLOCK", "resnet", "ConvNeXt-T")])
def test_a_choice_of_the_small_network_is_refused_by_the_full_profile(notebook, name, value, trained):
    with pytest.raises(ValueError, match=f"the full profile trains {trained}"):
        run_settings(notebook, profile="full", **{name: value})
