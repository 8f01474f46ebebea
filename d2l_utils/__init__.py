"""Infrastructure shared by the chapters: data, training, profiles, figures, run records."""

from .data import (CLASS_NAMES, PIXEL_MEAN, PIXEL_STD, Batches, CorruptDataError, DataNotFoundError,
                   FashionMNIST, Splits, fetch_fashion_mnist, find_fashion_mnist, load_fashion_mnist,
                   load_splits, read_fashion_mnist)
from .distributed import (BACKENDS, DistributedRunError, ShardedBatches, World, choose_backend,
                          fit_data_parallel, init_distributed, launch)
from .plot import plot_confusion, plot_history, show_cams, show_feature_maps, show_filters, show_images
from .profile import DEVICES, PROFILES, Profile, choose_device, choose_profile, device_name, seed_everything
from .recipe import Augment, Recipe, augment_batch, autocast_dtype, fit, weight_decay_groups
from .results import (code_version, find_run, load_runs, project_results_dir, read_run, record_run,
                      results_dir, runs_frame, runs_table)
from .stats import PairedTest, correct_predictions, decode_predictions, mcnemar
from .summary import (class_activation_map, count_macs, count_parameters, feature_maps, layer_summary,
                      network_depth, receptive_fields)
from .train import (EpochStats, History, Timer, accuracy, confusion_matrix, evaluate_accuracy,
                    evaluate_loss, predict, step_ms, train_classifier)

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES", "PIXEL_MEAN", "PIXEL_STD", "Batches", "CorruptDataError", "DataNotFoundError",
    "FashionMNIST", "Splits", "fetch_fashion_mnist", "find_fashion_mnist", "load_fashion_mnist",
    "load_splits", "read_fashion_mnist",
    "BACKENDS", "DistributedRunError", "ShardedBatches", "World", "choose_backend", "fit_data_parallel",
    "init_distributed", "launch",
    "Augment", "Recipe", "augment_batch", "autocast_dtype", "fit", "weight_decay_groups",
    "plot_confusion", "plot_history", "show_cams", "show_feature_maps", "show_filters", "show_images",
    "DEVICES", "PROFILES", "Profile", "choose_device", "choose_profile", "device_name",
    "seed_everything",
    "code_version", "find_run", "load_runs", "project_results_dir", "record_run", "results_dir",
    "read_run", "runs_frame", "runs_table",
    "PairedTest", "correct_predictions", "decode_predictions", "mcnemar",
    "class_activation_map", "count_macs", "count_parameters", "feature_maps", "layer_summary",
    "network_depth", "receptive_fields",
    "EpochStats", "History", "Timer", "accuracy", "confusion_matrix", "evaluate_accuracy",
    "evaluate_loss", "predict", "step_ms", "train_classifier",
]
