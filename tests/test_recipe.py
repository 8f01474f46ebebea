"""The shared training recipe (d2l_utils/recipe.py), the validation split and validated training."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from d2l_utils import Profile, read_fashion_mnist, record_run
from d2l_utils.data import PIXEL_MEAN, PIXEL_STD, _validation_split, load_splits
from d2l_utils.recipe import Augment, Recipe, augment_batch, autocast_dtype, fit, weight_decay_groups
from d2l_utils.train import predict


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- augmentation ------------------------------------------------------------------------------

def test_no_translation_and_no_flip_leave_the_batch_as_it_is():
    X = torch.rand(8, 1, 28, 28)
    assert torch.equal(augment_batch(X, generator(), translate=0, flip=False), X)


def test_each_image_is_shifted_by_at_most_translate_pixels_and_filled_with_background():
    X = torch.full((256, 2, 9, 9), -1.0)
    X[:, :, 4, 4] = 5.0  # one bright pixel in the middle of every image and channel
    out = augment_batch(X, generator(), translate=2, flip=False, fill=-1.0)
    assert out.shape == X.shape
    where = (out[:, 0] == 5.0).nonzero()
    assert len(where) == 256  # the pixel survives once in every image
    shifts = where[:, 1:] - 4
    assert shifts.abs().max() == 2 and len({tuple(s) for s in shifts.tolist()}) == 25
    assert torch.equal(out[:, 0], out[:, 1])  # both channels move together
    assert set(out.unique().tolist()) == {-1.0, 5.0}


def test_about_half_the_images_are_mirrored():
    X = torch.arange(4.0).repeat(1000, 1, 1, 1)  # (1000, 1, 1, 4): [0, 1, 2, 3]
    out = augment_batch(X, generator(), translate=0, flip=True)
    mirrored = (out[:, 0, 0, 0] == 3).float().mean()
    assert 0.45 < mirrored < 0.55
    assert torch.equal(out[out[:, 0, 0, 0] == 3], X.flip(-1)[: int(mirrored * 1000)])


def test_an_augment_seeded_alike_draws_alike_and_another_seed_differs():
    X = torch.rand(64, 1, 28, 28)
    assert torch.equal(Augment(3, "cpu")(X), Augment(3, "cpu")(X))
    assert not torch.equal(Augment(3, "cpu")(X), Augment(4, "cpu")(X))


# --- optimiser, schedule, loss -------------------------------------------------------------------

def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 26 * 26, 10))


def test_weight_decay_reaches_the_weights_of_convolutions_and_dense_layers_only():
    net = small_net()
    net[4].bias.requires_grad_(False)  # frozen: in no group
    decay, plain = weight_decay_groups(net, 5e-4)
    assert decay["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(decay) == {id(net[0].weight), id(net[4].weight)}
    assert ids(plain) == {id(net[0].bias), id(net[1].weight), id(net[1].bias)}


@pytest.mark.parametrize("settings, message", [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"epochs": 0}, "epochs must be a positive int"),
    ({"epochs": 2.0}, "epochs must be a positive int"),
    ({"translate": -1}, "translate must be a non-negative int"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
])
def test_a_bad_setting_is_refused_with_its_name(settings, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**{"epochs": 2, **settings})


def learning_rates(recipe: Recipe, steps_per_epoch: int) -> list[float]:
    optimizer = recipe.make_optimizer(small_net())
    scheduler = recipe.make_scheduler(optimizer, steps_per_epoch)
    rates = []
    for _ in range(recipe.epochs * steps_per_epoch):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["one-cycle", "cosine"])
def test_the_rate_warms_up_to_its_peak_then_decays_to_almost_nothing(schedule):
    rates = learning_rates(Recipe(epochs=4, lr=0.2, warmup=0.25, schedule=schedule), 25)
    peak = rates.index(max(rates))
    assert max(rates) == pytest.approx(0.2, rel=1e-3) and 20 <= peak <= 26
    assert all(a <= b for a, b in zip(rates[:peak], rates[1:peak + 1]))
    assert all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:]))
    assert rates[0] < 0.01 and rates[-1] < 1e-3


def test_a_constant_rate_after_warm_up():
    rates = learning_rates(Recipe(epochs=2, lr=0.05, schedule="constant", warmup=0.1), 10)
    assert rates[:2] == pytest.approx([0.025, 0.05]) and set(rates[2:]) == {0.05}


def test_sgd_uses_nesterov_momentum_and_adamw_its_betas():
    sgd = Recipe(epochs=1).make_optimizer(small_net())
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adamw = Recipe(epochs=1, optimizer="adamw", lr=1e-3, momentum=0.9).make_optimizer(small_net())
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)


def test_label_smoothing_puts_a_floor_under_a_confident_right_answer():
    logits = torch.tensor([[20.0] + [0.0] * 9])
    assert Recipe(epochs=1, label_smoothing=0.0).make_loss()(logits, torch.tensor([0])) < 1e-6
    smoothed = Recipe(epochs=1, label_smoothing=0.1).make_loss()(logits, torch.tensor([0]))
    assert smoothed == pytest.approx(0.1 * 20 * 9 / 10, rel=1e-3)  # 0.01 of the target on each wrong class


def test_the_settings_print_as_a_markdown_table():
    table = Recipe(epochs=3, lr=0.05).table().splitlines()
    assert table[:2] == ["| setting | value |", "|---|---|"]
    assert "| epochs | 3 |" in table and "| lr | 0.05 |" in table and "| label smoothing | 0.1 |" in table
    assert not any(row.startswith("| channels last") for row in table)
    assert "| channels last | True |" in Recipe(epochs=3, channels_last=True).table().splitlines()


# --- the validation split ------------------------------------------------------------------------

def test_the_validation_set_is_class_balanced_disjoint_and_fixed():
    labels = read_fashion_mnist().train_labels
    val, rest = _validation_split(labels, 5000)
    assert torch.bincount(labels[val]).tolist() == [500] * 10
    assert len(set(val.tolist()) | set(rest.tolist())) == 60000 and len(val) + len(rest) == 60000
    again, _ = _validation_split(labels, 5000)
    assert torch.equal(val, again)


def test_splits_hold_out_the_validation_images_and_keep_every_test_image():
    a, b = load_splits(500, seed=0), load_splits(500, seed=1)
    assert a.sizes == {"train": 55000, "val": 5000, "test": 10000}
    assert torch.equal(a.val.images, b.val.images)  # the seed shuffles training, not the split
    X, _ = next(iter(a.test))
    assert X.mean().abs() < 0.15 and (X.std() - 1).abs() < 0.15
    assert X.min().item() == pytest.approx(a.background)


def test_the_pixel_statistics_are_those_of_the_training_images():
    images = read_fashion_mnist().train_images.double() / 255
    assert images.mean().item() == pytest.approx(PIXEL_MEAN, abs=5e-5)
    assert images.std().item() == pytest.approx(PIXEL_STD, abs=5e-5)


def test_subsets_for_tests_shrink_the_training_and_test_images_not_the_validation_split():
    full, small = load_splits(500), load_splits(500, train_size=300, test_size=200, validation=100)
    assert small.sizes == {"train": 300, "val": 100, "test": 200}
    assert torch.equal(small.test.labels, load_splits(500, test_size=200).test.labels)
    # the 200 test images are among the 10,000, as they are
    where = {bytes(img.to(torch.uint8).numpy()) for img in full.test.images}
    assert all(bytes(img.to(torch.uint8).numpy()) in where for img in small.test.images)


@pytest.mark.parametrize("validation", [5, 5001, 100.0])
def test_a_validation_size_that_cannot_be_balanced_is_refused(validation):
    with pytest.raises(ValueError, match="validation"):
        load_splits(128, validation=validation)


# --- training under the recipe -------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(0)
    splits = load_splits(256, train_size=2000, validation=1000)
    net = small_net()
    history = fit(net, splits, Recipe(epochs=2, lr=0.05), verbose=False)
    return splits, net, history


def test_epochs_are_scored_on_validation_and_the_test_set_once_at_the_end(trained):
    splits, net, history = trained
    assert history.validated and all(s.test_acc is None and 0 <= s.val_acc <= 1 for s in history.epochs)
    assert len(history.predictions) == 10000
    assert history.test_acc == pytest.approx((history.predictions == splits.test.labels).float().mean().item())
    assert torch.equal(history.predictions, predict(net, splits.test))
    assert history.summary().endswith(f"val acc {history.final.val_acc:.3f}, test acc "
                                      f"{history.test_acc:.3f} after 2 epochs on cpu")


def test_flip_at_test_time_averages_each_image_with_its_mirror(trained):
    splits, net, _ = trained
    X, _ = next(iter(splits.test))
    net.eval()
    with torch.no_grad():
        expected = ((net(X) + net(X.flip(-1))) / 2).argmax(1)
    assert torch.equal(predict(net, splits.test, flip=True)[:len(X)], expected)


def test_a_validated_run_records_its_sizes_test_accuracy_and_every_prediction(trained, tmp_path):
    splits, net, history = trained
    path = record_run(history, chapter="06_lenet", model="small", net=net,
                      profile=Profile("quick", torch.device("cpu")), hparams=Recipe(epochs=2).settings(),
                      directory=tmp_path, sizes=splits.sizes)
    record = json.loads(path.read_text())
    assert record["sizes"] == {"train": 2000, "val": 1000, "test": 10000}
    assert record["test_acc"] == history.test_acc and record["hparams"]["label_smoothing"] == 0.1
    digits = record["test_predictions"]
    assert len(digits) == 10000 and [int(d) for d in digits[:50]] == history.predictions[:50].tolist()
    assert "val_acc" in record["final"] and record["final"]["test_acc"] is None


def test_channels_last_changes_the_layout_of_the_weights_not_what_the_network_computes():
    def two_convs():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 24 * 24, 10))

    def splits():  # a fresh copy each time: the same shuffled batches for both runs
        return load_splits(64, train_size=512, test_size=64, validation=100)

    torch.manual_seed(0)
    plain, channels_last = two_convs(), two_convs()
    channels_last.load_state_dict(plain.state_dict())
    recipe = Recipe(epochs=1, lr=0.05, translate=0, flip=False)
    fit(plain, splits(), recipe, verbose=False)
    fit(channels_last, splits(), dataclasses.replace(recipe, channels_last=True), verbose=False)
    conv = channels_last[3]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    for a, b in zip(plain.parameters(), channels_last.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)  # rounding, after 8 steps


@pytest.mark.parametrize("schedule", ["one-cycle", "cosine", "constant"])
def test_a_run_of_one_or_two_steps_still_gets_a_schedule(schedule):
    for steps in (1, 2):
        optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        scheduler = Recipe(epochs=1, lr=0.1, schedule=schedule).make_scheduler(optimizer, steps)
        rates = []
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
            rates.append(optimizer.param_groups[0]["lr"])
        assert all(0 <= r <= 0.1 + 1e-12 for r in rates), (schedule, steps, rates)


# --- what a GPU needs: mixed precision, channels-last, compilation --------------------------------

def test_the_table_shows_precision_and_compilation_only_when_a_recipe_asks_for_them():
    default = Recipe(epochs=3).table()
    assert "precision" not in default and "compile" not in default
    named = Recipe(epochs=3, precision="bfloat16", compile=True).table().splitlines()
    assert "| precision | bfloat16 |" in named and "| compile | True |" in named


def test_auto_precision_is_float32_off_a_cuda_gpu_and_mixed_on_one(monkeypatch):
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("float32", "cpu") is None
    assert autocast_dtype("bfloat16", "cpu") == torch.bfloat16  # named: on any device autocast supports
    asked = []

    def bf16_supported(native):  # a GPU with bfloat16 tensor cores, or one that can only emulate it
        def is_bf16_supported(including_emulation=True):
            asked.append(including_emulation)
            return native or including_emulation
        return is_bf16_supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported(True))
    assert autocast_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported(False))
    assert autocast_dtype("auto", "cuda") == torch.float16  # an older GPU (a T4): float16, not emulation
    assert set(asked) == {False}
    with pytest.raises(ValueError, match="no native bfloat16.*use precision=.float16."):
        autocast_dtype("bfloat16", "cuda")


@pytest.mark.parametrize("settings, message", [
    ({"precision": "half"}, "precision must be one of auto, float32, bfloat16, float16"),
    ({"compile": "yes"}, "compile must be True or False"),
])
def test_a_bad_gpu_setting_is_refused_with_its_name(settings, message):
    with pytest.raises(ValueError, match=message):
        Recipe(epochs=1, **settings)


def mixed_splits():
    return load_splits(64, train_size=512, test_size=128, validation=100)


def test_the_default_recipe_on_a_cpu_trains_in_float32_and_says_nothing_more(capsys, tmp_path):
    torch.manual_seed(0)
    net = small_net()
    history = fit(net, mixed_splits(), Recipe(epochs=1, lr=0.05, translate=0, flip=False))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("epoch  train loss"), printed[0]  # the log opens the output, as before
    assert history.precision is None and "precision" not in history.to_dict()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    path = record_run(history, chapter="00_test", model="float32", net=net, directory=tmp_path,
                      profile=Profile("quick", torch.device("cpu")), hparams={})
    assert "precision" not in json.loads(path.read_text())


def test_bfloat16_autocast_follows_float32_training_on_the_cpu_and_the_record_says_so(capsys, tmp_path):
    recipe = Recipe(epochs=2, lr=0.05, translate=0, flip=False)
    torch.manual_seed(0)
    plain = fit(small_net(), mixed_splits(), recipe, verbose=False)
    torch.manual_seed(0)
    net = small_net()
    history = fit(net, mixed_splits(), dataclasses.replace(recipe, precision="bfloat16"))
    assert capsys.readouterr().out.splitlines()[0] == "on cpu: autocast in bfloat16"
    assert history.precision == "bfloat16 autocast"
    assert all(p.dtype == torch.float32 for p in net.parameters())  # the weights stay float32
    # bfloat16 keeps about three significant digits: the losses agree to about one percent
    assert history["train_loss"] == pytest.approx(plain["train_loss"], rel=0.01)
    assert history["train_loss"][1] < history["train_loss"][0] and len(history.predictions) == 128
    path = record_run(history, chapter="00_test", model="bf16", net=net, directory=tmp_path,
                      profile=Profile("full", torch.device("cpu")), hparams={})
    assert json.loads(path.read_text())["precision"] == "bfloat16 autocast"


def test_mixed_precision_scores_enlarged_images_made_in_float32():
    # The full profiles enlarge the 28-pixel images on the device, and score the validation
    # set under autocast: the enlargement must still give float32 pixels, the same as without.
    splits = load_splits(64, 40, train_size=256, test_size=128, validation=100)
    plain = next(iter(splits.val))[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = next(iter(splits.val))[0]
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    history = fit(net, splits, Recipe(epochs=1, lr=0.05, translate=0, flip=False, precision="bfloat16"),
                  verbose=False)
    assert history.input_shape == (1, 40, 40) and len(history.predictions) == 128


def test_float16_trains_with_a_gradient_scaler(capsys):
    torch.manual_seed(0)
    history = fit(small_net(), mixed_splits(),
                  Recipe(epochs=2, lr=0.05, translate=0, flip=False, precision="float16"))
    assert capsys.readouterr().out.splitlines()[0] == "on cpu: autocast in float16, gradient scaling"
    assert history.precision == "float16 autocast with gradient scaling"
    assert history["train_loss"][1] < history["train_loss"][0]


def test_compile_hands_the_network_to_torch_compile(monkeypatch, capsys):
    compiled = []

    def fake_compile(module):  # the real one needs a C++ compiler and a minute; the call is what matters
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = small_net()
    fit(net, mixed_splits(), Recipe(epochs=1, lr=0.05, compile=True))
    assert compiled == [net]
    assert capsys.readouterr().out.splitlines()[0] == "on cpu: torch.compile"
