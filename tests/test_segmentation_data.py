"""cnn_jax.datasets.mnist_segmentation: MNIST digits on a 64x64 canvas with 11-class masks."""
import numpy as np
import pytest

from cnn_jax.datasets import mnist_idx, mnist_segmentation as seg


@pytest.fixture(scope='module')
def mnist():
  return mnist_idx.load()


@pytest.fixture(scope='module')
def small(mnist):
  (train_x, train_y), _ = mnist
  return seg.generate(train_x, train_y, 300, seed=7)


def test_shapes_and_dtypes(small):
  assert small.images.shape == (300, 64, 64, 1) and small.images.dtype == np.uint8
  assert small.masks.shape == (300, 64, 64) and small.masks.dtype == np.uint8
  assert small.digits.shape == (300, 3) and small.boxes.shape == (300, 3, 4)
  counts = (small.digits >= 0).sum(axis=1)
  assert counts.min() == 1 and counts.max() == 3
  assert set(np.unique(counts)) == {1, 2, 3}
  # Slots fill from the front; a used slot has a real box inside the canvas.
  assert np.all(np.diff((small.digits >= 0).astype(int), axis=1) <= 0)
  t, l, h, w = np.moveaxis(small.boxes[small.digits >= 0], -1, 0)
  assert t.min() >= 0 and l.min() >= 0 and (t + h).max() <= 64 and (l + w).max() <= 64
  assert h.max() <= 28 and w.max() <= 28 and h.min() > 0


def test_class_set(small):
  values = np.unique(small.masks)
  assert set(values) == set(range(seg.NUM_CLASSES))  # background and all ten digits at 300 images
  # Each image's mask holds exactly background plus its own digits' classes.
  for n in range(20):
    own = {1 + d for d in small.digits[n] if d >= 0}
    assert set(np.unique(small.masks[n])) - {0} <= own and 0 in small.masks[n]


def test_masks_align_with_digit_pixels(small):
  # A pixel is a digit pixel exactly when its intensity exceeds the threshold ...
  np.testing.assert_array_equal(small.masks > 0, small.images[..., 0] > 127)
  # ... and it carries the class of the digit whose box holds it; boxes never overlap and
  # nothing is drawn outside them.
  for n in range(len(small.images)):
    covered = np.zeros((64, 64), int)
    expected = np.zeros((64, 64), np.uint8)
    for d, (t, l, h, w) in zip(small.digits[n], small.boxes[n]):
      if d < 0:
        continue
      covered[t:t + h, l:l + w] += 1
      expected[t:t + h, l:l + w] = np.where(small.images[n, t:t + h, l:l + w, 0] > 127, 1 + d, 0)
    assert covered.max() == 1
    np.testing.assert_array_equal(small.masks[n], expected)
    assert not small.images[n, ..., 0][covered == 0].any()


def test_threshold_is_a_parameter(mnist):
  (x, y), _ = mnist
  low = seg.generate(x, y, 20, seed=1, threshold=0)
  np.testing.assert_array_equal(low.images, seg.generate(x, y, 20, seed=1).images)
  np.testing.assert_array_equal(low.masks > 0, low.images[..., 0] > 0)


def test_deterministic_from_the_seed(mnist):
  (x, y), _ = mnist
  a, b = seg.generate(x, y, 40, seed=3), seg.generate(x, y, 40, seed=3)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  c = seg.generate(x, y, 40, seed=4)
  assert not np.array_equal(a.images, c.images)


def _ink_boxes(images):
  """(top, left, height, width) of the non-zero pixels of each 28x28 digit."""
  rows, cols = images.any(axis=2), images.any(axis=1)
  top, left = rows.argmax(axis=1), cols.argmax(axis=1)
  bottom = 28 - rows[:, ::-1].argmax(axis=1)
  right = 28 - cols[:, ::-1].argmax(axis=1)
  return np.stack([top, left, bottom - top, right - left], axis=1)


def test_load_draws_train_from_train_and_test_from_test(mnist):
  train, test = seg.load(num_train=12, num_test=12, seed=5)
  train2, test2 = seg.load(num_train=30, num_test=12, seed=5)
  np.testing.assert_array_equal(test.images, test2.images)  # test ignores num_train
  np.testing.assert_array_equal(train.images, train2.images[:12])
  sources = {split: (x[..., 0], y, _ink_boxes(x[..., 0])) for split, (x, y) in
             zip(('train', 'test'), mnist)}

  def found_in(split, patch, digit):
    x, y, boxes = sources[split]
    h, w = patch.shape
    for i in np.flatnonzero((y == digit) & (boxes[:, 2] == h) & (boxes[:, 3] == w)):
      t, l = boxes[i, :2]
      if np.array_equal(x[i, t:t + h, l:l + w], patch):
        return True
    return False

  for data, split, other in ((train, 'train', 'test'), (test, 'test', 'train')):
    for n in range(4):
      d, (t, l, h, w) = data.digits[n, 0], data.boxes[n, 0]
      patch = data.images[n, t:t + h, l:l + w, 0]
      assert found_in(split, patch, d)
      assert not found_in(other, patch, d)


def test_bad_arguments(mnist):
  (x, y), _ = mnist
  with pytest.raises(ValueError, match='min_digits'):
    seg.generate(x, y, 1, min_digits=0)
  with pytest.raises(ValueError, match='smaller than a digit'):
    seg.generate(x, y, 1, size=20)
  with pytest.raises(ValueError, match='uint8'):
    seg.generate(x.astype(np.float32), y, 1)
