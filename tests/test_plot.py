"""Figures of what a network learned, and the confusion matrix that one of them draws."""

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display is needed, and none may exist

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from d2l_utils import (CLASS_NAMES, class_activation_map, confusion_matrix, feature_maps,  # noqa: E402
                       plot_confusion, read_fashion_mnist, show_cams, show_feature_maps, show_filters)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def test_set():
    """The first 8 test images as floats in [0, 1], (8, 1, 28, 28), and their labels."""
    data = read_fashion_mnist()
    return data.test_images[:8].float().div(255).unsqueeze(1), data.test_labels[:8]


# --- confusion_matrix (train.py) --------------------------------------------------------------

def test_confusion_rows_are_true_classes_and_columns_predictions():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(predictions, labels, num_classes=3)
    assert matrix.dtype == torch.int64
    assert matrix.tolist() == [[1, 1, 0],
                               [0, 1, 0],
                               [1, 0, 2]]


def test_confusion_diagonal_counts_the_hits_and_rows_count_each_true_class():
    labels = read_fashion_mnist().test_labels[:1000]
    # every third image mistaken for the next class, the rest right
    predictions = torch.where(torch.arange(1000) % 3 == 0, (labels + 1) % 10, labels)
    matrix = confusion_matrix(predictions, labels)
    assert matrix.shape == (10, 10)
    assert matrix.trace() == (predictions == labels).sum()
    assert matrix.sum(dim=1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert matrix.sum(dim=0).tolist() == torch.bincount(predictions, minlength=10).tolist()


def test_confusion_of_mismatched_lengths_raises():
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))


@pytest.mark.parametrize("bad", [-1, 10])
def test_confusion_of_a_class_outside_the_range_raises(bad):
    with pytest.raises(ValueError, match=r"must lie in 0\.\.9"):
        confusion_matrix(torch.tensor([0, bad]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([bad, 1]))


def test_confusion_of_logits_instead_of_classes_raises():
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(torch.randn(4, 10), torch.tensor([0, 1, 2, 3]))


# --- plot_confusion ---------------------------------------------------------------------------

def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_confusion_plot_writes_row_fractions_to_two_decimals():
    ax = plot_confusion(torch.tensor([[3, 1], [0, 4]]), class_names=("coat", "shirt"))
    assert cell_texts(ax) == ["0.75", "0.25", "0.00", "1.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["coat", "shirt"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["coat", "shirt"]
    assert all(t.get_rotation() == 45 for t in ax.get_xticklabels())
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")


def test_confusion_plot_writes_counts_when_not_normalised():
    ax = plot_confusion(torch.tensor([[3, 1], [0, 4]]), class_names=("coat", "shirt"), normalize=False)
    assert cell_texts(ax) == ["3", "1", "0", "4"]


def test_a_class_never_seen_gives_zeros_rather_than_nan():
    ax = plot_confusion(torch.tensor([[0, 0], [1, 1]]), class_names=("coat", "shirt"))
    assert cell_texts(ax) == ["0.00", "0.00", "0.50", "0.50"]


def test_confusion_plot_names_the_ten_classes_and_draws_on_the_given_axis():
    labels = read_fashion_mnist().test_labels[:500]
    _, given = plt.subplots()
    ax = plot_confusion(confusion_matrix(labels.roll(1), labels), ax=given, title="shifted")
    assert ax is given
    assert [t.get_text() for t in ax.get_yticklabels()] == list(CLASS_NAMES)
    assert len(ax.texts) == 100 and ax.get_title() == "shifted"


def test_confusion_plot_of_the_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        plot_confusion(torch.zeros(3, 3))


# --- show_filters -----------------------------------------------------------------------------

def test_one_input_channel_gives_one_image_per_kernel_on_a_symmetric_scale():
    torch.manual_seed(0)
    weight = nn.Conv2d(1, 6, kernel_size=5).weight
    fig = show_filters(weight, ncols=4)
    drawn = [ax for ax in fig.axes if ax.get_images()]
    assert len(fig.axes) == 8 and len(drawn) == 6  # two rows of four, two left empty
    for i, ax in enumerate(drawn):
        image = ax.get_images()[0]
        assert torch.equal(torch.as_tensor(image.get_array().data), weight[i, 0].detach())
        m = weight[i].abs().max().item()
        assert image.get_clim() == pytest.approx((-m, m))
        assert image.get_cmap().name == "RdBu_r"


def test_several_input_channels_show_their_mean_unless_one_is_chosen():
    torch.manual_seed(0)
    weight = nn.Conv2d(3, 4, kernel_size=3).weight.detach()
    mean = [torch.as_tensor(ax.get_images()[0].get_array().data) for ax in show_filters(weight).axes]
    chosen = [torch.as_tensor(ax.get_images()[0].get_array().data)
              for ax in show_filters(weight, channel=2).axes]
    for i in range(4):
        torch.testing.assert_close(mean[i], weight[i].mean(dim=0))
        assert torch.equal(chosen[i], weight[i, 2])


def test_filters_of_a_weight_that_is_not_four_dimensional_raise():
    with pytest.raises(ValueError, match="C_out, C_in"):
        show_filters(torch.zeros(6, 5, 5))


# --- show_feature_maps ------------------------------------------------------------------------

def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))


def test_feature_maps_get_one_row_per_spatial_layer_with_its_name_and_shape(test_set):
    images, _ = test_set
    maps = feature_maps(small_net(), images[0])
    fig = show_feature_maps(maps, channels=6)
    grid = fig.axes
    assert len(grid) == 4 * 6  # Flatten and Linear have no map; four rows of six
    labels = [grid[row * 6].get_ylabel() for row in range(4)]
    assert labels == ["0 Conv2d\n(8, 28, 28)", "1 ReLU\n(8, 28, 28)", "2 MaxPool2d\n(8, 14, 14)",
                      "3 Conv2d\n(4, 12, 12)"]
    assert [ax.get_title() for ax in grid[:6]] == [f"channel {c}" for c in range(6)]
    first = torch.as_tensor(grid[0].get_images()[0].get_array().data)
    assert torch.equal(first, maps[0][1][0])


def test_a_layer_with_fewer_channels_leaves_the_rest_of_its_row_empty(test_set):
    images, _ = test_set
    fig = show_feature_maps(feature_maps(small_net(), images[0]), channels=6)
    last_row = fig.axes[-6:]
    assert [len(ax.get_images()) for ax in last_row] == [1, 1, 1, 1, 0, 0]


def test_feature_maps_without_any_spatial_output_raise():
    with pytest.raises(ValueError, match="map"):
        show_feature_maps([("0 Linear", torch.zeros(10))])


# --- show_cams --------------------------------------------------------------------------------

def test_cams_lie_over_their_images_titled_true_over_predicted_and_red_when_wrong(test_set):
    images, labels = test_set
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2,
                                                                                        padding=1))
    dense = nn.Linear(5, 10)
    with torch.no_grad():
        features = body(images)  # (8, 5, 7, 7)
    predictions = labels.clone()
    predictions[[1, 4]] = (labels[[1, 4]] + 1) % 10
    cams = torch.stack([class_activation_map(f, dense.weight.detach(), int(p))
                        for f, p in zip(features, predictions)])
    fig = show_cams(images, cams, labels, predictions, ncols=4)
    assert len(fig.axes) == 8
    for i, ax in enumerate(fig.axes):
        grey, overlay = ax.get_images()
        assert grey.get_cmap().name == "gray"
        assert torch.equal(torch.as_tensor(grey.get_array().data), images[i, 0])
        assert 0 < overlay.get_alpha() < 1
        assert overlay.get_extent() == [-0.5, 27.5, 27.5, -0.5]  # the 7 x 7 map stretched over 28 x 28
        true, pred = CLASS_NAMES[int(labels[i])], CLASS_NAMES[int(predictions[i])]
        assert ax.get_title() == f"{true}\n{pred}"
        assert ax.title.get_color() == ("red" if i in (1, 4) else "black")


def test_cams_and_images_of_different_counts_raise(test_set):
    images, labels = test_set
    with pytest.raises(ValueError, match="8 images but 3 maps"):
        show_cams(images, torch.zeros(3, 7, 7), labels, labels)
