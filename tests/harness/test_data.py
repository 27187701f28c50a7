"""Data sources, splits, batch order, augmentation determinism, tfds path (faked)."""

import os
import pathlib
import sys
import types
from unittest import mock

import jax
import numpy as np
import pytest

from experiments import input_pipeline as data
from experiments.input_pipeline import DataError, load_dataset
from experiments.input_pipeline import datasets as data_sources

CIFAR_DIR = pathlib.Path("/work/shared/data/cifar10")


def _write_npz_dir(d, n_train=40, n_test=20, **override):
  d.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for name, n in (("train", n_train), ("test", n_test)):
    arrays = dict(image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                  label=np.arange(n) % 10)
    arrays.update(override.get(name, {}))
    np.savez(d / f"{name}.npz", **arrays)
  return d


def test_embedded_sample_is_balanced_real_cifar():
  ds = load_dataset("sample")
  assert ds.num_classes == 10
  assert ds.train.images.shape == (1600, 32, 32, 3) and ds.train.images.dtype == np.uint8
  assert len(ds.test) == 400
  assert np.bincount(ds.train.labels).tolist() == [160] * 10
  assert np.bincount(ds.test.labels).tolist() == [40] * 10
  # real images, not noise: neighbouring pixels are strongly correlated
  x = ds.train.images[:200].astype(float)
  c = np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1]
  assert c > 0.8
  assert data.SAMPLE_PATH.stat().st_size < 6e6


@pytest.mark.slow  # re-encodes the sample (~3 s idle)
@pytest.mark.skipif(not CIFAR_DIR.exists(), reason="real CIFAR-10 not available")
def test_make_sample_reproduces_the_embedded_sample(tmp_path):
  out = data.make_sample(str(CIFAR_DIR), tmp_path / "s.npz")
  a, b = np.load(out), np.load(data.SAMPLE_PATH)
  for k in ("train_image", "train_label", "test_image", "test_label"):
    np.testing.assert_array_equal(a[k], b[k])


def test_npz_dir_roundtrip(tmp_path):
  d = _write_npz_dir(tmp_path / "ok")
  ds = load_dataset(f"npz:{d}")
  assert len(ds.train) == 40 and len(ds.test) == 20 and ds.num_classes == 10
  assert ds.train.labels.dtype == np.int32


@pytest.mark.parametrize("case,needle", [
    ("nodir", "no such directory"),
    ("notest", "test.npz not found"),
    ("nolabel", "missing array(s) ['label']"),
    ("badshape", "(N, 32, 32, 3)"),
    ("floatimg", "uint8"),
    ("badlabels", "`label` must be integers"),
    ("garbage", "cannot read as .npz"),
])
def test_npz_errors_say_what_is_expected(tmp_path, case, needle):
  d = tmp_path / case
  if case != "nodir":
    _write_npz_dir(d)
  if case == "notest":
    os.remove(d / "test.npz")
  elif case == "nolabel":
    np.savez(d / "train.npz", image=np.zeros((4, 32, 32, 3), np.uint8))
  elif case == "badshape":
    np.savez(d / "train.npz", image=np.zeros((4, 28, 28), np.uint8), label=np.zeros(4, int))
  elif case == "floatimg":
    np.savez(d / "train.npz", image=np.zeros((4, 32, 32, 3), np.float32), label=np.zeros(4, int))
  elif case == "badlabels":
    np.savez(d / "train.npz", image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(3, int))
  elif case == "garbage":
    (d / "train.npz").write_bytes(b"not a zip file")
  with pytest.raises(DataError) as e:
    load_dataset(f"npz:{d}")
  msg = str(e.value)
  assert needle in msg
  assert "train.npz and DIR/test.npz" in msg  # says what is expected and how to get it


def test_unknown_dataset_lists_choices():
  with pytest.raises(DataError, match="cifar10, cifar100, npz:DIR, sample"):
    load_dataset("imagenet")


def test_val_and_subset_are_disjoint_and_deterministic():
  full = load_dataset("sample")
  a = load_dataset("sample", train_subset=300, val_size=200, split_seed=1)
  b = load_dataset("sample", train_subset=300, val_size=200, split_seed=1)
  c = load_dataset("sample", train_subset=300, val_size=200, split_seed=2)
  assert len(a.train) == 300 and len(a.val) == 200
  np.testing.assert_array_equal(a.train.images, b.train.images)
  assert not np.array_equal(a.train.images, c.train.images)
  key = lambda s: {im.tobytes() for im in s.images}
  assert not key(a.train) & key(a.val)
  assert key(a.train) | key(a.val) <= key(full.train)
  # a random subset of class-grouped data still covers every class
  assert len(np.unique(a.train.labels)) == 10
  with pytest.raises(ValueError, match="cannot hold out"):
    load_dataset("sample", train_subset=1500, val_size=200)


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  o1, o2 = data.epoch_order(100, 3, 7), data.epoch_order(100, 3, 7)
  np.testing.assert_array_equal(o1, o2)
  assert sorted(o1.tolist()) == list(range(100))
  assert not np.array_equal(o1, data.epoch_order(100, 3, 8))
  assert not np.array_equal(o1, data.epoch_order(100, 4, 7))


def test_train_batches_resume_from_a_position():
  split = load_dataset("sample").train
  full = list(data.train_batches(split, 100, seed=0, epoch=2))
  assert len(full) == data.steps_per_epoch(1600, 100) == 16
  tail = list(data.train_batches(split, 100, seed=0, epoch=2, start=9))
  for (x1, y1), (x2, y2) in zip(full[9:], tail):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  seen = np.concatenate([y for _, y in full])
  assert np.bincount(seen).tolist() == [160] * 10  # every image once per epoch


def test_eval_batches_pad_and_mask():
  split = data.Split(np.arange(5 * 32 * 32 * 3, dtype=np.uint8).reshape(5, 32, 32, 3) % 255,
                     np.arange(5, dtype=np.int32))
  batches = list(data.eval_batches(split, 2))
  assert [b[0].shape[0] for b in batches] == [2, 2, 2]
  assert batches[-1][2].tolist() == [1.0, 0.0]
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[:5], split.labels)


def test_augmentation_is_deterministic_from_the_key():
  images = load_dataset("sample").train.images[:16]
  f = jax.jit(data.augment)
  a = f(jax.random.key(0), images)
  b = f(jax.random.key(0), images)
  c = f(jax.random.key(1), images)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == (16, 32, 32, 3) and a.dtype == np.float32
  # every output is a (possibly flipped) 32x32 window of the 4-padded image
  norm = np.asarray(data.normalize(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))))
  for i in range(16):
    out = np.asarray(a[i])
    found = any(
        np.allclose(out, w, atol=1e-5) or np.allclose(out, w[:, ::-1], atol=1e-5)
        for dy in range(9) for dx in range(9)
        for w in [norm[i, dy:dy + 32, dx:dx + 32]])
    assert found, i


class _FakeSource(list):
  def __getitems__(self, idx):
    return [self[i] for i in idx]


def test_tfds_source_reads_through_data_source_with_a_split():
  rng = np.random.default_rng(0)
  calls = []

  def data_source(name, *, split=None, data_dir=None, download=True):
    calls.append((name, split, data_dir, download))
    n = 1500 if split == "train" else 300
    return _FakeSource({"image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                        "label": i % 100, "id": f"{split}_{i}"} for i in range(n))

  fake = types.SimpleNamespace(data_source=data_source)
  train, test, k = data_sources.load_tfds("cifar100", "/data", _tfds=fake)
  assert calls == [("cifar100", "train", "/data", True), ("cifar100", "test", "/data", True)]
  assert len(train) == 1500 and len(test) == 300 and k == 100
  assert train.labels[:3].tolist() == [0, 1, 2]


def test_tfds_failure_explains_preparation():
  def data_source(name, **kw):
    raise ModuleNotFoundError("No module named 'tensorflow'")

  with pytest.raises(DataError, match="preparing it does.*experiments.input_pipeline prepare cifar10.*npz:DIR"):
    data_sources.load_tfds("cifar10", None, _tfds=types.SimpleNamespace(data_source=data_source))


def _fake_cifar10_archive(root):
  """The extracted layout of cifar-10-binary.tar.gz, with a few random records."""
  d = root / "extracted" / "cifar-10-batches-bin"
  d.mkdir(parents=True)
  rng = np.random.default_rng(0)
  for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
    rec = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], 1)
    rec.astype(np.uint8).tofile(d / name)
  (d / "batches.meta.txt").write_text("\n".join(
      "airplane automobile bird cat deer dog frog horse ship truck".split()))
  return root / "extracted"


@pytest.mark.skipif("tensorflow" in sys.modules or
                    __import__("importlib").util.find_spec("tensorflow") is not None,
                    reason="establishes the behaviour without TensorFlow")
def test_real_tfds_preparation_needs_tensorflow(tmp_path):
  """The real tfds CIFAR-10 builder on a fake archive (download mocked): without
  TensorFlow, preparing fails, and our error says how to prepare once."""
  tfds = pytest.importorskip("tensorflow_datasets")
  extracted = _fake_cifar10_archive(tmp_path)
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         return_value=str(extracted)):
    with pytest.raises(DataError, match="TensorFlow"):
      data_sources.load_tfds("cifar10", str(tmp_path / "tfds"))
