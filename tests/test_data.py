"""Bundled MNIST: checksums, clear errors for missing or corrupt files, splits, on-device preprocessing."""
import gzip
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import config_base, datasets, input_pipeline
from cnn_jax.datasets import mnist_idx


@pytest.fixture(scope='module')
def splits():
  return datasets.load(config_base.base_config().data)


def test_bundled_mnist_shapes_and_split(splits):
  assert splits.train[0].shape == (58976, 28, 28, 1) and splits.train[0].dtype == np.uint8
  assert splits.val[0].shape == (1024, 28, 28, 1)  # C15
  assert splits.test[0].shape == (10000, 28, 28, 1)
  assert splits.num_classes == 10
  assert set(np.unique(splits.test[1])) == set(range(10))
  # Validation images are not in the training split.
  train_images = {r.tobytes() for r in splits.train[0]}
  assert sum(r.tobytes() in train_images for r in splits.val[0]) == 0
  assert 0.12 < float(splits.mean[0]) < 0.14 and 0.30 < float(splits.std[0]) < 0.32


def test_split_is_fixed_by_split_seed_only():
  c = config_base.base_config().data
  a, b = datasets.load(c), datasets.load(c)
  np.testing.assert_array_equal(a.val[1], b.val[1])
  c.split_seed = 1
  assert not np.array_equal(datasets.load(c).val[1], a.val[1])


def _copy(tmp_path):
  for name, _ in mnist_idx.FILES.values():
    shutil.copy(mnist_idx.DEFAULT_DIR / name, tmp_path / name)
  return tmp_path


def test_missing_file_names_the_file(tmp_path):
  folder = _copy(tmp_path)
  (folder / 't10k-labels-idx1-ubyte.gz').unlink()
  with pytest.raises(datasets.DataError, match=r'missing: .*t10k-labels-idx1-ubyte\.gz.*git checkout'):
    mnist_idx.load(folder)


def test_corrupt_file_names_the_file(tmp_path):
  folder = _copy(tmp_path)
  path = folder / 'train-labels-idx1-ubyte.gz'
  raw = bytearray(path.read_bytes())
  raw[100] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(datasets.DataError, match=r'corrupt: .*train-labels-idx1-ubyte\.gz has md5'):
    mnist_idx.load(folder)


def test_truncated_idx_is_caught_even_without_checksum(tmp_path):
  folder = _copy(tmp_path)
  path = folder / 't10k-images-idx3-ubyte.gz'
  data = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(data[:-100]))
  with pytest.raises(datasets.DataError, match=r't10k-images-idx3-ubyte\.gz is truncated'):
    mnist_idx.load(folder, verify=False)
  path.write_bytes(gzip.compress(b'\x00\x00\x0d\x03' + data[4:]))
  with pytest.raises(datasets.DataError, match='bad magic'):
    mnist_idx.load(folder, verify=False)


def test_unknown_dataset_and_unbundled_source():
  c = config_base.base_config().data
  c.dataset = 'minst'
  with pytest.raises(ValueError, match="Did you mean 'mnist'"):
    datasets.load(c)
  c.dataset = 'cifar10'
  with pytest.raises(ValueError, match='not bundled.*source=tfds'):
    datasets.load(c)


def test_tfds_without_prepared_data_explains_the_fix(tmp_path):
  c = config_base.base_config().data
  c.source, c.data_dir = 'tfds', str(tmp_path)
  with pytest.raises(datasets.DataError, match='not prepared.*tfds build mnist'):
    datasets.load(c)


def test_preprocess_pads_normalises_and_augments():
  pre = input_pipeline.Preprocess(mean=(0.5,), std=(0.25,), image_size=32, random_crop_padding=4,
                                  horizontal_flip=True)
  images = jnp.full((8, 28, 28, 1), 255, jnp.uint8)
  x = pre(images, None, train=False)
  assert x.shape == (8, 32, 32, 1)
  np.testing.assert_allclose(x[:, 2:30, 2:30], 2.0)  # (1 - 0.5) / 0.25
  np.testing.assert_allclose(x[:, :2], -2.0)  # the border is the normalised value of black
  y1 = pre(images, jax.random.key(0), train=True)
  y2 = pre(images, jax.random.key(0), train=True)
  np.testing.assert_array_equal(y1, y2)  # same rng, same augmentation
  assert not np.array_equal(y1, x)  # crops moved the digit


def test_epoch_permutation_is_a_function_of_rng_and_epoch():
  rng = jax.random.key(3)
  p0 = input_pipeline.epoch_permutation(rng, 0, 100)
  np.testing.assert_array_equal(p0, input_pipeline.epoch_permutation(rng, 0, 100))
  assert sorted(np.asarray(p0).tolist()) == list(range(100))
  assert not np.array_equal(p0, input_pipeline.epoch_permutation(rng, 1, 100))


def test_tfds_source_through_mocked_reader():
  """The TFDS path end to end on TFDS's own mock data (no download, no TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  c = config_base.base_config().data
  c.source, c.validation_size = 'tfds', 10
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    s = datasets.load(c)
  assert s.train[0].shape == (30, 28, 28, 1) and s.train[0].dtype == np.uint8
  assert s.val[0].shape == (10, 28, 28, 1) and s.test[0].shape == (40, 28, 28, 1)
  assert s.train[1].dtype == np.int32 and s.num_classes == 10 and s.source == 'tfds'
