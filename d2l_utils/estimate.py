"""How long the ``full`` profile of a chapter should take on a GPU: an estimate from its arithmetic.

Each chapter's time on a GPU is estimated, and labelled as an estimate, from two things
(the runs measured so far, on one GPU, are the records in ``results/full/cuda/``, which
``measured_table`` lists):

- the arithmetic of its run, counted: the multiply-accumulates (MACs) of one forward pass
  of one image (``count_macs``), times 3 for each training image (the backward pass
  computes the gradients with respect to the inputs and to the weights, each about as
  costly as the forward pass), times the training images and the epochs; plus one forward
  pass per validation image every epoch, and one per test image at the end (two with
  test-time flips);
- a sustained rate of MACs per second on a GPU, which is an assumption. Its basis is the
  throughput NVIDIA publishes for ResNet-50 v1.5 in PyTorch with mixed precision
  (DeepLearningExamples, ``PyTorch/Classification/ConvNets/resnet50v1.5``, results from the
  21.03 NGC container): 1,198 images per second for forward passes in batches of 256 on a
  T4 (one of the GPUs Colab offers), at 4,089,184,256 MACs per 224x224 image, about 4.9 x 10^12
  MACs per second. The same page gives training throughput only for larger GPUs; on a V100,
  where it gives both, training (1,200 images/s, three passes' worth each) sustains about
  the same MAC rate as inference (3,382 images/s), so the T4's inference rate stands in for
  its training rate.

What the estimate leaves out makes it a lower bound rather than a prediction: the
networks of this book are narrower than ResNet-50, and a narrow layer keeps less of a GPU
busy; batch normalisation, activations and pooling (not counted as MACs) read and write
memory; and every batch costs a fixed overhead to launch its kernels, which is all that a
network as small as LeNet costs. A faster GPU divides the time by its own rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RESNET50_MACS", "T4_RESNET50_IMAGES_PER_SECOND", "ASSUMED_MACS_PER_SECOND", "FullRun",
           "FULL_RUNS", "training_macs", "estimate_gpu_seconds", "format_estimate", "estimates_table",
           "measured_runs", "measured_table", "format_measured"]

RESNET50_MACS = 4_089_184_256            # count_macs(torchvision.models.resnet50(), (3, 224, 224))
T4_RESNET50_IMAGES_PER_SECOND = 1198     # NVIDIA's figure, see the module's docstring
ASSUMED_MACS_PER_SECOND = T4_RESNET50_IMAGES_PER_SECOND * RESNET50_MACS   # about 4.9e12


def training_macs(macs_per_image: int, *, epochs: int, train_images: int, val_images: int = 0,
                  test_images: int = 0, test_passes: int = 1) -> int:
    """The MACs of a whole run: 3 per training image and epoch (forward and backward), one forward
    pass per validation image and epoch, ``test_passes`` per test image once at the end."""
    for name, value in (("macs_per_image", macs_per_image), ("epochs", epochs),
                        ("train_images", train_images)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    for name, value in (("val_images", val_images), ("test_images", test_images),
                        ("test_passes", test_passes)):
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a non-negative int; got {value!r}")
    return macs_per_image * (epochs * (3 * train_images + val_images) + test_passes * test_images)


def estimate_gpu_seconds(macs_per_image: int, *, epochs: int, train_images: int, val_images: int = 0,
                         test_images: int = 0, test_passes: int = 1,
                         macs_per_second: float = ASSUMED_MACS_PER_SECOND) -> float:
    """Seconds of GPU arithmetic for a run at an assumed sustained rate (see the module's docstring)."""
    if not macs_per_second > 0:
        raise ValueError(f"macs_per_second must be positive; got {macs_per_second!r}")
    return training_macs(macs_per_image, epochs=epochs, train_images=train_images, val_images=val_images,
                         test_images=test_images, test_passes=test_passes) / macs_per_second


def format_estimate(seconds: float) -> str:
    """A rounded duration for prose and tables: "under a minute", "about 6 minutes"."""
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    return f"about {minutes} minute{'s' if minutes != 1 else ''}"


@dataclass(frozen=True)
class FullRun:
    """The main training run of a chapter's ``full`` profile, as its notebook sets it up.

    ``tests/test_estimate.py`` checks the epochs, input side, validation images and
    test-time flips against the notebook's code, and ``tests/test_full_profile.py`` the
    model's name, input side and MACs against the record that a run of the notebook writes.
    """
    chapter: str          # the notebook's stem
    model: str            # the model name its record carries
    network: str          # the name a reader knows it by
    side: int             # input height and width
    macs_per_image: int
    epochs: int
    train_images: int = 55_000
    val_images: int = 5_000
    test_images: int = 10_000
    flip_test: bool = True

    @property
    def seconds(self) -> float:
        return estimate_gpu_seconds(self.macs_per_image, epochs=self.epochs, train_images=self.train_images,
                                    val_images=self.val_images, test_images=self.test_images,
                                    test_passes=2 if self.flip_test else 1)


FULL_RUNS = (
    FullRun("06_lenet", "lenet-recipe", "ReLU LeNet under the recipe", 28, 416_520, 20),
    FullRun("07_alexnet", "alexnet", "AlexNet", 224, 938_146_176, 30),
    FullRun("08_vgg", "vgg11-ratio8-bn", "VGG-11 / 8 with batch normalisation", 224, 121_091_072, 30),
    FullRun("10_googlenet", "googlenet", "GoogLeNet", 96, 276_066_304, 30),
    FullRun("12_resnet", "resnet18", "ResNet-18", 96, 318_657_536, 30),
    FullRun("13_densenet", "densenet", "DenseNet", 96, 129_077_168, 30),
    FullRun("14_modern_convolutions", "convnext-tiny", "ConvNeXt-T", 96, 816_460_032, 30),
)


def estimates_table(runs: tuple[FullRun, ...] = FULL_RUNS) -> str:
    """A Markdown table of the estimated GPU time of each chapter's ``full`` run."""
    lines = ["| chapter | network | input | MACs per image | epochs | MACs of the run (10^12) | estimated GPU time |",
             "|---|---|---|---:|---:|---:|---|"]
    for run in runs:
        total = training_macs(run.macs_per_image, epochs=run.epochs, train_images=run.train_images,
                              val_images=run.val_images, test_images=run.test_images,
                              test_passes=2 if run.flip_test else 1)
        lines.append(f"| {run.chapter} | {run.network} | {run.side}x{run.side} | {run.macs_per_image:,} "
                     f"| {run.epochs} | {total / 1e12:,.1f} | {format_estimate(run.seconds)} |")
    return "\n".join(lines)


def measured_runs(directory: str | Path | None = None) -> list[dict]:
    """The committed records of full runs on a CUDA GPU (``results/full/cuda/``), in path order."""
    from .results import load_runs, project_results_dir

    folder = Path(directory) if directory is not None else project_results_dir() / "full" / "cuda"
    return load_runs(folder) if folder.is_dir() else []


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def format_measured(run: dict) -> str:
    """What one measured run reached, for prose: "0.951 test accuracy after 30 epochs in 4.9 min"."""
    return (f"{run['test_acc']:.3f} test accuracy after {len(run['epochs'])} epochs "
            f"in {_minutes(run['wall_time'])}")


def measured_table(runs: list[dict] | None = None) -> str:
    """A Markdown table of the full runs measured on a GPU: one row per record."""
    runs = measured_runs() if runs is None else runs
    lines = ["| record | input | epochs | precision | val acc | test acc | wall time | GPU | PyTorch | date |",
             "|---|---|---:|---|---:|---:|---:|---|---|---|"]
    for run in runs:
        side = run["input_shape"][-1]
        val = run["final"].get("val_acc")
        lines.append(f"| {Path(run['path']).stem} | {side}x{side} | {len(run['epochs'])} "
                     f"| {run.get('precision') or 'float32'} | {'' if val is None else f'{val:.3f}'} "
                     f"| {run['test_acc']:.3f} | {_minutes(run['wall_time'])} | {run['device_name']} "
                     f"| {run['torch']} | {run['date'][:10]} |")
    return "\n".join(lines)
