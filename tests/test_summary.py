"""Looking inside a model: layer-by-layer shapes and parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from d2l_utils import (class_activation_map, count_macs, count_parameters, feature_maps, layer_summary,
                       network_depth, read_fashion_mnist, receptive_fields)

# Parameter counts worked out by hand: a convolution has out*in*k*k weights and
# out biases, a linear layer out*in weights and out biases.
CONV = 6 * 1 * 5 * 5 + 6            # 156
LINEAR = 10 * (6 * 14 * 14) + 10    # 11,770


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU(),
                         nn.MaxPool2d(kernel_size=2, stride=2), nn.Flatten(),
                         nn.Linear(6 * 14 * 14, 10))


def test_rows_give_each_layers_output_shape_and_parameters():
    rows = layer_summary(small_cnn(), (2, 1, 28, 28))
    assert rows == [("0", (2, 6, 28, 28), CONV),
                    ("1", (2, 6, 28, 28), 0),
                    ("2", (2, 6, 14, 14), 0),
                    ("3", (2, 6 * 14 * 14), 0),
                    ("4", (2, 10), LINEAR)]


def test_the_printed_table_names_layers_and_totals_the_parameters(capsys):
    layer_summary(small_cnn(), (1, 1, 28, 28))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "output", "shape", "parameters"]
    assert lines[1].split() == ["input", "(1,", "1,", "28,", "28)"]
    assert lines[2].split() == ["0", "Conv2d", "(1,", "6,", "28,", "28)", "156"]
    assert lines[6].split() == ["4", "Linear", "(1,", "10)", "11,770"]
    assert lines[-1].split() == ["total", f"{CONV + LINEAR:,}"]
    assert len(lines) == 8


def test_a_tensor_and_a_shape_give_the_same_rows():
    net = small_cnn()
    assert layer_summary(net, torch.rand(3, 1, 28, 28)) == layer_summary(net, (3, 1, 28, 28))


def test_depth_two_opens_the_containers():
    def blocks():
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.ReLU()),
            nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 14 * 14, 10)))

    outer = layer_summary(blocks(), (1, 1, 28, 28))
    assert outer == [("0", (1, 6, 28, 28), CONV), ("1", (1, 10), LINEAR)]
    inner = layer_summary(blocks(), (1, 1, 28, 28), depth=2)
    assert inner == [("0.0", (1, 6, 28, 28), CONV), ("0.1", (1, 6, 28, 28), 0),
                     ("1.0", (1, 6, 14, 14), 0), ("1.1", (1, 6 * 14 * 14), 0),
                     ("1.2", (1, 10), LINEAR)]


def test_lazy_layers_are_materialised_and_counted():
    net = nn.Sequential(nn.LazyConv2d(4, kernel_size=3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    rows = layer_summary(net, (1, 1, 28, 28))
    conv, linear = 4 * 1 * 3 * 3 + 4, 10 * (4 * 26 * 26) + 10
    assert rows == [("0", (1, 4, 26, 26), conv), ("1", (1, 4, 26, 26), 0),
                    ("2", (1, 4 * 26 * 26), 0), ("3", (1, 10), linear)]
    assert count_parameters(net) == conv + linear
    assert isinstance(net[3], nn.Linear) and net[3].in_features == 4 * 26 * 26


@pytest.mark.parametrize("training", [True, False])
def test_the_summary_changes_neither_the_weights_nor_the_mode(training):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.BatchNorm1d(32), nn.Dropout(0.5),
                        nn.Linear(32, 10)).train(training)
    state = copy.deepcopy(net.state_dict())
    layer_summary(net, (4, 1, 28, 28))
    assert net.training is training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # BatchNorm stats too
    assert all(p.grad is None for p in net.parameters())


def test_count_parameters_can_leave_out_frozen_ones():
    net = small_cnn()
    assert count_parameters(net) == CONV + LINEAR
    net[0].requires_grad_(False)
    assert count_parameters(net) == LINEAR
    assert count_parameters(net, trainable_only=False) == CONV + LINEAR
    assert count_parameters(nn.ReLU()) == 0


# --- count_macs -------------------------------------------------------------------------------

def test_macs_of_a_dense_layer_are_its_weights():
    assert count_macs(nn.Linear(784, 10), (784,)) == 7840


def test_macs_of_a_convolution_count_every_output_value_and_the_groups():
    # 6 x 28 x 28 outputs, each a 5 x 5 window over 1 channel
    assert count_macs(nn.Conv2d(1, 6, 5, padding=2), (1, 28, 28)) == 6 * 28 * 28 * 25
    # stride 2 and 2 groups: 8 x 4 x 4 outputs, each over 4 / 2 channels of a 3 x 3 window
    assert count_macs(nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), (4, 8, 8)) == 8 * 16 * 2 * 9


def test_macs_add_up_over_a_network_and_leave_out_pooling_and_activations():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(2 * 3 * 3, 5))
    assert count_macs(net, (1, 8, 8)) == 2 * 6 * 6 * 9 + 18 * 5


def test_counting_macs_changes_neither_the_mode_nor_leaves_hooks():
    net = nn.Sequential(nn.Linear(3, 2), nn.Dropout())
    net.train()
    count_macs(net, (3,))
    assert net.training and not net[0]._forward_hooks


# --- network_depth ----------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, shortcut_conv: bool):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1))
        self.shortcut = nn.Conv2d(2, 2, 1) if shortcut_conv else nn.Identity()

    def forward(self, X):
        return torch.relu(self.body(X) + self.shortcut(X))


@pytest.mark.parametrize("shortcut_conv", [False, True])
def test_depth_counts_the_longest_path_so_shortcuts_do_not_shorten_it(shortcut_conv):
    net = nn.Sequential(nn.Conv2d(1, 2, 3), Residual(shortcut_conv), Residual(shortcut_conv),
                        nn.Flatten(), nn.LazyLinear(10))
    assert network_depth(net, (1, 8, 8)) == 1 + 2 + 2 + 1


def test_parallel_branches_count_once():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 2, 1)
            self.b = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 3, padding=1))

        def forward(self, X):
            return torch.cat([self.a(X), self.b(X)], dim=1)

    assert network_depth(Branches(), (1, 5, 5)) == 2


def test_dense_layers_with_and_without_bias_count_and_pooling_does_not():
    net = nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(),
                        nn.Linear(8, 4, bias=False))
    assert network_depth(net, (1, 8, 8)) == 2


# --- receptive_fields -------------------------------------------------------------------------

def lenet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(),
                         nn.AvgPool2d(kernel_size=2, stride=2),
                         nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(),
                         nn.AvgPool2d(kernel_size=2, stride=2),
                         nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
                         nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def test_lenet_fields_match_the_ones_worked_out_by_hand():
    rows = receptive_fields(lenet(), (1, 28, 28), verbose=False)
    windows = [rows[i] for i in (0, 2, 3, 5)]  # the two convolutions and the two poolings
    assert [row["r"] for row in windows] == [5, 6, 14, 16]
    assert [row["j"] for row in windows] == [1, 2, 2, 4]
    # start + ((k - 1) / 2 - p) j: 0.5 + (2 - 2) 1, 0.5 + 0.5 x 1, 1 + 2 x 2, 5 + 0.5 x 2
    assert [row["start"] for row in windows] == [0.5, 1.0, 5.0, 6.0]
    assert [row["shape"] for row in windows] == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5)]


def test_activations_keep_the_field_and_dense_layers_leave_the_grid():
    rows = receptive_fields(lenet(), (1, 28, 28), verbose=False)
    assert (rows[1]["r"], rows[1]["j"], rows[1]["start"]) == (5, 1, 0.5)  # the Sigmoid after conv 0
    assert [row["layer"] for row in rows[6:8]] == ["6 Flatten", "7 Linear"]
    assert all(row["r"] is None and row["j"] is None and row["start"] is None for row in rows[6:])
    assert rows[-1]["shape"] == (10,)


def strided_net() -> nn.Sequential:
    # r: 3, 5, 7, then the dilated conv (effective kernel 5) 7 + 4 x 4 = 23, then 23 + 2 x 4 = 31
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AvgPool2d(2),
                         nn.Conv2d(4, 2, 3, dilation=2, padding=2), nn.BatchNorm2d(2),
                         nn.AvgPool2d(3, stride=2, padding=1))


def pooled_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 5, stride=2, padding=2), nn.Sigmoid(),
                         nn.AvgPool2d(3, stride=1, padding=1), nn.Dropout(0.5),
                         nn.Conv2d(2, 2, 3, stride=2))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("make, size", [(strided_net, 64), (pooled_net, 40)])
def test_the_field_is_where_one_outputs_gradient_reaches_the_input(make, size):
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():  # positive weights and a positive input: no gradient cancels out
        for p in net.parameters():
            p.abs_()
    last = receptive_fields(net, (1, size, size), verbose=False)[-1]
    X = torch.ones(1, 1, size, size, requires_grad=True)
    out = net(X)
    row, col = out.shape[-2] // 2, out.shape[-1] // 2
    out[0, 0, row, col].backward()
    reached = X.grad[0, 0] != 0
    rows, cols = reached.any(dim=1).nonzero().flatten(), reached.any(dim=0).nonzero().flatten()
    assert rows.min() > 0 and rows.max() < size - 1, "the field must not be clipped by the padding"
    assert rows.max() - rows.min() + 1 == last["r"]
    assert cols.max() - cols.min() + 1 == last["r"]
    # pixel i spans [i, i + 1), so the reached pixels centre on (first + last + 1) / 2
    assert (rows.min() + rows.max() + 1).item() / 2 == last["start"] + row * last["j"]
    assert (cols.min() + cols.max() + 1).item() / 2 == last["start"] + col * last["j"]


def test_the_printed_table_gives_field_jump_and_start_per_layer(capsys):
    rows = receptive_fields(lenet(), (1, 28, 28))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "output", "shape", "receptive", "field", "jump", "start"]
    assert lines[1].split() == ["input", "(1,", "28,", "28)", "1", "1", "0.5"]
    assert lines[4].split() == ["2", "AvgPool2d", "(6,", "14,", "14)", "6", "2", "1.0"]
    assert lines[8].split() == ["6", "Flatten", "(400,)", "-", "-", "-"]
    assert len(lines) == len(rows) + 2


def test_nested_sequentials_are_opened_with_dotted_names():
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2)),
                           nn.Sequential(nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2)))
    rows = receptive_fields(nested, (1, 28, 28), verbose=False)
    assert [row["layer"] for row in rows] == ["0.0 Conv2d", "0.1 Sigmoid", "0.2 AvgPool2d",
                                              "1.0 Conv2d", "1.1 Sigmoid", "1.2 AvgPool2d"]
    flat = receptive_fields(lenet(), (1, 28, 28), verbose=False)[:6]
    assert [(r["r"], r["j"], r["start"]) for r in rows] == [(r["r"], r["j"], r["start"]) for r in flat]


def test_global_average_pooling_covers_the_whole_map_and_uneven_pooling_leaves_the_grid():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.AdaptiveAvgPool2d(1))
    conv, gap = receptive_fields(net, (1, 15, 15), verbose=False)
    assert (conv["r"], conv["j"], conv["shape"]) == (3, 2, (2, 7, 7))
    assert (gap["r"], gap["j"]) == (3 + 6 * 2, 14)  # a 7 x 7 window of outputs 2 pixels apart
    uneven = receptive_fields(nn.Sequential(nn.AdaptiveMaxPool2d(3)), (1, 8, 8), verbose=False)
    assert uneven[0]["r"] is None and uneven[0]["shape"] == (1, 3, 3)


def test_a_kernel_that_is_not_square_gives_a_height_width_pair():
    rows = receptive_fields(nn.Sequential(nn.Conv2d(1, 2, (3, 5), padding=(1, 0))), (1, 9, 12),
                            verbose=False)
    assert (rows[0]["r"], rows[0]["j"], rows[0]["start"]) == ((3, 5), 1, (0.5, 2.5))


def test_a_layer_with_an_unknown_field_raises_naming_it():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Residual(shortcut_conv=False))
    with pytest.raises(ValueError, match="1 Residual"):
        receptive_fields(net, (1, 8, 8), verbose=False)


def test_receptive_fields_leave_the_mode_and_the_batch_statistics_alone():
    net = strided_net().train()
    state = copy.deepcopy(net.state_dict())
    receptive_fields(net, (1, 16, 16), verbose=False)
    assert net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# --- feature_maps and class_activation_map ----------------------------------------------------

@pytest.fixture(scope="module")
def test_images():
    """The first 4 test images as floats in [0, 1], (4, 1, 28, 28)."""
    return read_fashion_mnist().test_images[:4].float().div(255).unsqueeze(1)


@pytest.mark.usefixtures("one_thread")
def test_feature_maps_name_each_layer_and_end_with_the_networks_output(test_images):
    net = small_cnn().train()
    maps = feature_maps(net, test_images[0])
    assert [name for name, _ in maps] == ["0 Conv2d", "1 ReLU", "2 MaxPool2d", "3 Flatten", "4 Linear"]
    assert [tuple(m.shape) for _, m in maps] == [(6, 28, 28), (6, 28, 28), (6, 14, 14), (6 * 14 * 14,), (10,)]
    with torch.no_grad():
        torch.testing.assert_close(maps[-1][1], net.eval()(test_images[:1])[0])
    assert all(not m.requires_grad for _, m in maps)


def test_feature_maps_run_in_evaluation_mode_and_restore_the_mode(test_images):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout(0.9)).train()
    maps = feature_maps(net, test_images[0])
    torch.testing.assert_close(maps[1][1], maps[0][1])  # dropout did nothing
    assert net.training


def test_feature_maps_of_a_batch_raise():
    with pytest.raises(ValueError, match=r"one \(C, H, W\) image"):
        feature_maps(small_cnn(), torch.zeros(2, 1, 28, 28))


def gap_net() -> tuple[nn.Sequential, nn.Linear]:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU())
    return body, nn.Linear(5, 10)


@pytest.mark.usefixtures("one_thread")
def test_the_mean_of_a_class_map_is_the_logit_less_the_bias(test_images):
    body, dense = gap_net()
    net = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), dense)
    with torch.no_grad():
        logits = net(test_images)
        features = body(test_images)
    for image in range(len(test_images)):
        for k in range(10):
            cam = class_activation_map(features[image], dense.weight.detach(), k)
            assert cam.shape == (7, 7)
            torch.testing.assert_close(cam.mean(), logits[image, k] - dense.bias[k].detach())


def test_a_resized_map_has_the_image_size_and_stays_within_the_maps_range(test_images):
    body, dense = gap_net()
    with torch.no_grad():
        features = body(test_images[:1])[0]
    small = class_activation_map(features, dense.weight.detach(), 3)
    large = class_activation_map(features, dense.weight.detach(), 3, size=(28, 28))
    assert large.shape == (28, 28)
    # bilinear interpolation only mixes neighbours, so it cannot overshoot the map it resizes
    assert small.min() - 1e-6 <= large.min() and large.max() <= small.max() + 1e-6
    assert not torch.allclose(large, large.mean())


def test_a_map_of_mismatched_features_and_weight_raises():
    with pytest.raises(ValueError, match="num_classes, C"):
        class_activation_map(torch.zeros(5, 7, 7), torch.zeros(10, 4), 0)
