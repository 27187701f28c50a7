r"""CIFAR data for the experiments: sources, in-memory splits, batch order.

Sources (``--dataset``):

- ``cifar10`` / ``cifar100``: TensorFlow Datasets, read with
  ``tfds.data_source(name, split=..., data_dir=...)``, which needs no
  TensorFlow (``data_source(name)`` *without* a split returns an empty dict,
  so a split is always given). If the dataset is not prepared yet, it is
  downloaded and prepared on first use (``download=True``). Preparing needs
  TensorFlow (established with tensorflow-datasets 4.9.10 on a fake archive:
  the CIFAR builder reads the binary batches with ``tf.io.gfile.GFile`` and
  the ``Image`` feature PNG-encodes each image with TensorFlow; etils also
  wants ``importlib_resources``): do it once with ``python -m experiments.input_pipeline
  prepare cifar10 --data-dir DIR`` where TensorFlow is installed; training
  then reads DIR without TensorFlow.
- ``npz:DIR``: ``DIR/train.npz`` and ``DIR/test.npz``, each with ``image``
  (N, 32, 32, 3) uint8 and ``label`` (N,) integers (the format of a plain
  NumPy export of CIFAR).
- ``sample``: a small, class-balanced real CIFAR-10 sample shipped in
  ``experiments/sample/cifar10_sample.npz`` so the harness works offline;
  ``python -m experiments.input_pipeline make-sample --src DIR`` rebuilds it.

A split is loaded once into NumPy arrays (CIFAR fits in memory). Batches are
drawn from a permutation that is a pure function of ``(seed, epoch)``, so a
run resumed at any epoch sees the same batches as an uninterrupted one.
Augmentation and normalisation run on the device inside the train step
(:mod:`experiments.input_pipeline.augment`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import pathlib
import sys
from typing import Iterator

import numpy as np

from experiments.files import write_bytes

SAMPLE_PATH = pathlib.Path(__file__).parents[1] / "sample" / "cifar10_sample.npz"
TFDS_DATASETS = {"cifar10": 10, "cifar100": 100}
DATASET_CHOICES = ("cifar10", "cifar100", "npz:DIR", "sample")


class DataError(ValueError):
  """A dataset that is missing or not in the expected format."""


@dataclasses.dataclass
class Split:
  images: np.ndarray  # (N, 32, 32, 3) uint8
  labels: np.ndarray  # (N,) int32

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def take(self, index: np.ndarray) -> "Split":
    return Split(self.images[index], self.labels[index])


@dataclasses.dataclass
class Dataset:
  name: str
  num_classes: int
  train: Split
  test: Split
  val: Split | None = None


# ----------------------------------------------------------------- sources


def _check_arrays(images, labels, where: str, how: str) -> Split:
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
    raise DataError(
        f"{where}: `image` must be uint8 of shape (N, 32, 32, 3), got "
        f"{images.dtype} {images.shape}. {how}"
    )
  if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(
      labels.dtype, np.integer):
    raise DataError(
        f"{where}: `label` must be integers of shape ({images.shape[0]},), got "
        f"{labels.dtype} {labels.shape}. {how}"
    )
  return Split(images, labels.astype(np.int32))


_NPZ_HOW = (
    "Expected DIR/train.npz and DIR/test.npz, each holding `image` (N,32,32,3) "
    "uint8 and `label` (N,) int, e.g. written with np.savez(path, image=..., "
    "label=...). Or use --dataset cifar10 (TensorFlow Datasets) or --dataset "
    "sample (the small sample shipped in the repo)."
)


def load_npz_split(path: pathlib.Path) -> Split:
  if not path.is_file():
    raise DataError(f"dataset file {path} not found. {_NPZ_HOW}")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in ("image", "label") if k not in f.files]
      if missing:
        raise DataError(
            f"{path}: missing array(s) {missing} (found {f.files}). {_NPZ_HOW}"
        )
      return _check_arrays(f["image"], f["label"], str(path), _NPZ_HOW)
  except DataError:
    raise
  except Exception as e:  # zip/pickle errors from a corrupt or foreign file
    raise DataError(f"{path}: cannot read as .npz ({e}). {_NPZ_HOW}") from e


def load_npz_dir(directory: str) -> tuple[Split, Split, int]:
  d = pathlib.Path(directory).expanduser()
  if not d.is_dir():
    raise DataError(f"--dataset npz:{directory}: no such directory. {_NPZ_HOW}")
  train = load_npz_split(d / "train.npz")
  test = load_npz_split(d / "test.npz")
  num_classes = int(max(train.labels.max(), test.labels.max())) + 1
  return train, test, num_classes


def load_sample() -> tuple[Split, Split, int]:
  if not SAMPLE_PATH.is_file():
    raise DataError(
        f"the embedded sample {SAMPLE_PATH} is missing; rebuild it with "
        "`python -m experiments.input_pipeline make-sample --src DIR` (DIR with CIFAR-10 "
        "train.npz/test.npz) or reinstall the package."
    )
  with np.load(SAMPLE_PATH) as f:
    how = "The embedded sample is damaged; rebuild it with make-sample."
    train = _check_arrays(f["train_image"], f["train_label"], str(SAMPLE_PATH), how)
    test = _check_arrays(f["test_image"], f["test_label"], str(SAMPLE_PATH), how)
  return train, test, 10


def _tfds_split_to_arrays(source, where: str) -> Split:
  n = len(source)
  images = np.empty((n, 32, 32, 3), np.uint8)
  labels = np.empty((n,), np.int64)
  chunk = 1024
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    # __getitems__ reads a batch of records in one call (much faster than
    # indexing one by one).
    records = source.__getitems__(idx)
    for j, r in zip(idx, records):
      images[j] = r["image"]
      labels[j] = r["label"]
  return _check_arrays(images, labels, where, "")


PREPARE_HOW = (
    "Reading a prepared dataset needs no TensorFlow, but preparing it does "
    "(tensorflow-datasets' CIFAR builder reads the archive with tf.io.gfile and "
    "PNG-encodes every image with TensorFlow): prepare it once with "
    "`pip install tensorflow-cpu importlib_resources && python -m experiments.input_pipeline "
    "prepare {name} --data-dir DIR` (possibly on another machine, then copy DIR), "
    "and train with --data-dir DIR; or convert CIFAR to train.npz/test.npz and "
    "use --dataset npz:DIR."
)


def _tfds_failure(name, split, data_dir, e) -> str:
  text = f"{type(e).__name__}: {e}"
  msg = (f"--dataset {name}: could not load the {split!r} split with "
         f"tensorflow-datasets (data_dir={data_dir!r}): {text[:300]}. ")
  if "tensorflow" in text.lower() or "importlib_resources" in text:
    return msg + PREPARE_HOW.format(name=name)
  return msg + (
      "If it is not prepared yet, preparing downloads the archive from the "
      "dataset's host (internet needed). " + PREPARE_HOW.format(name=name))


def prepare_tfds(name: str, data_dir: str | None, *, _tfds=None) -> None:
  """Downloads and prepares ``name`` in the array_record format read by ``data_source``."""
  if _tfds is None:
    import tensorflow_datasets as _tfds
  builder = _tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()


def load_tfds(name: str, data_dir: str | None, *, _tfds=None) -> tuple[Split, Split, int]:
  """Loads a TFDS CIFAR dataset into arrays without TensorFlow.

  ``_tfds`` replaces the ``tensorflow_datasets`` module (for tests).
  """
  if _tfds is None:
    try:
      import tensorflow_datasets as _tfds
    except ImportError as e:
      raise DataError(
          f"--dataset {name} needs tensorflow-datasets: `pip install "
          "tensorflow-datasets` (TensorFlow itself is not needed to read), or "
          "use --dataset npz:DIR / --dataset sample."
      ) from e
  splits = {}
  for split in ("train", "test"):
    try:
      source = _tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    except Exception as e:
      raise DataError(_tfds_failure(name, split, data_dir, e)) from e
    splits[split] = _tfds_split_to_arrays(source, f"tfds:{name}/{split}")
  return splits["train"], splits["test"], TFDS_DATASETS[name]


def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    train_subset: int | None = None,
    val_size: int = 0,
    split_seed: int = 0,
) -> Dataset:
  """Loads ``spec`` (one of ``DATASET_CHOICES``) into memory.

  The validation split (``val_size`` images) and the training subset
  (``train_subset`` images) are drawn from one permutation of the training
  set seeded by ``split_seed``: validation first, then the subset from the
  rest, so the two never overlap.
  """
  if spec in TFDS_DATASETS:
    train, test, k = load_tfds(spec, data_dir)
  elif spec.startswith("npz:"):
    train, test, k = load_npz_dir(spec[len("npz:"):])
  elif spec == "sample":
    train, test, k = load_sample()
  else:
    raise DataError(
        f"unknown dataset {spec!r}; valid choices: {', '.join(DATASET_CHOICES)}."
    )
  for what, v in (("train_subset", train_subset), ("val_size", val_size)):
    if v is not None and (not isinstance(v, (int, np.integer)) or v < 0):
      raise ValueError(f"`{what}` must be a non-negative int, got {v!r}.")
  n = len(train)
  want = val_size + (train_subset or 0)
  if val_size >= n or want > n:
    raise ValueError(
        f"the training set has {n} images: cannot hold out val_size={val_size} "
        f"and keep train_subset={train_subset}; lower them."
    )
  val = None
  if val_size or train_subset:
    # Sources may be grouped by class: always pick through a permutation.
    perm = np.random.default_rng(split_seed).permutation(n)
    if val_size:
      val = train.take(np.sort(perm[:val_size]))
    rest = perm[val_size:]
    if train_subset:
      rest = rest[:train_subset]
    train = train.take(np.sort(rest))
  return Dataset(spec, k, train, test, val)


# ----------------------------------------------------------------- batches


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of ``range(n)`` used in ``epoch``; a pure function."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Full batches per epoch: the last partial batch is dropped, so every step
  has one shape and compiles once."""
  return n // batch_size


def train_batches(
    split: Split, batch_size: int, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields the full batches of ``epoch`` from batch index ``start`` on."""
  order = epoch_order(len(split), seed, epoch)
  for b in range(start, steps_per_epoch(len(split), batch_size)):
    idx = order[b * batch_size:(b + 1) * batch_size]
    yield split.images[idx], split.labels[idx]


def eval_batches(
    split: Split, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Yields ``(images, labels, mask)`` covering ``split`` once, in order.

  The last batch is padded to ``batch_size`` (so every batch has one shape
  and one compiled executable) and ``mask`` is 0 on the padding.
  """
  n = len(split)
  for s in range(0, n, batch_size):
    images, labels = split.images[s:s + batch_size], split.labels[s:s + batch_size]
    m = len(labels)
    mask = np.ones(batch_size, np.float32)
    if m < batch_size:
      pad = batch_size - m
      images = np.concatenate([images, np.zeros((pad, 32, 32, 3), np.uint8)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask[m:] = 0
    yield images, labels, mask


# ----------------------------------------------------------------- sample


def make_sample(
    src: str, out: str | os.PathLike = SAMPLE_PATH, *, train_per_class: int = 160,
    test_per_class: int = 40, seed: int = 0,
) -> pathlib.Path:
  """Writes a class-balanced sample of a CIFAR-10 npz folder (atomically)."""
  train, test, _ = load_npz_dir(src)
  rng = np.random.default_rng(seed)

  def pick(split: Split, per_class: int) -> Split:
    idx = []
    for c in range(10):
      members = np.flatnonzero(split.labels == c)
      if len(members) < per_class:
        raise DataError(f"{src}: class {c} has {len(members)} < {per_class} images.")
      idx.append(rng.choice(members, per_class, replace=False))
    idx = np.concatenate(idx)
    return split.take(idx[rng.permutation(len(idx))])

  tr, te = pick(train, train_per_class), pick(test, test_per_class)
  buf = io.BytesIO()
  np.savez_compressed(buf, train_image=tr.images, train_label=tr.labels,
                      test_image=te.images, test_label=te.labels)
  return write_bytes(out, buf.getvalue())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m experiments.input_pipeline", description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  ms = sub.add_parser("make-sample", help="rebuild the embedded CIFAR-10 sample")
  ms.add_argument("--src", required=True,
                  help="folder with CIFAR-10 train.npz/test.npz")
  ms.add_argument("--out", default=str(SAMPLE_PATH))
  ms.add_argument("--train-per-class", type=int, default=160)
  ms.add_argument("--test-per-class", type=int, default=40)
  ms.add_argument("--seed", type=int, default=0)
  pr = sub.add_parser("prepare", help="download and prepare cifar10/cifar100 with "
                      "tensorflow-datasets (needs TensorFlow and internet, once)")
  pr.add_argument("name", choices=sorted(TFDS_DATASETS))
  pr.add_argument("--data-dir", default=None)
  args = p.parse_args(argv)
  if args.cmd == "prepare":
    try:
      prepare_tfds(args.name, args.data_dir)
    except Exception as e:
      print(f"error: {_tfds_failure(args.name, 'train', args.data_dir, e)}", file=sys.stderr)
      return 2
    print(f"prepared {args.name} in {args.data_dir or '~/tensorflow_datasets'}")
    return 0
  try:
    out = make_sample(args.src, args.out, train_per_class=args.train_per_class,
                      test_per_class=args.test_per_class, seed=args.seed)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
  return 0


__all__ = [
    "DATASET_CHOICES", "DataError", "Dataset", "Split",
    "epoch_order", "eval_batches", "load_dataset", "make_sample",
    "steps_per_epoch", "train_batches",
]
