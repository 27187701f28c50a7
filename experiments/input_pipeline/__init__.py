"""CIFAR input pipeline: sources and batch order on the host
(:mod:`~experiments.input_pipeline.datasets`), augmentation on the device
(:mod:`~experiments.input_pipeline.augment`). ``python -m
experiments.input_pipeline make-sample|prepare`` builds the embedded sample or
prepares a TFDS dataset."""

from experiments.input_pipeline.augment import CIFAR_MEAN, CIFAR_STD, augment, normalize
from experiments.input_pipeline.datasets import (
    DATASET_CHOICES, SAMPLE_PATH, TFDS_DATASETS, DataError, Dataset, Split, epoch_order,
    eval_batches, load_dataset, make_sample, prepare_tfds, steps_per_epoch,
    train_batches)

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "DATASET_CHOICES", "SAMPLE_PATH", "TFDS_DATASETS",
    "DataError", "Dataset", "Split", "augment", "epoch_order", "eval_batches",
    "load_dataset", "make_sample", "normalize", "prepare_tfds", "steps_per_epoch",
    "train_batches",
]
