"""Looking inside a model: layer-by-layer shapes and parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from d2l_utils import count_macs, count_parameters, layer_summary, network_depth

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
