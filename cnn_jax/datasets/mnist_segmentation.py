"""A semantic-segmentation set made offline from the bundled MNIST (for U-Net, claim C23).

Each image is a blank `size` x `size` canvas (default 64) with 1 to `max_digits` (default 3)
MNIST digits pasted at random positions; the digits' ink boxes (the tight bounding box of each
digit's non-zero pixels) never overlap. The mask has 11 classes: 0 = background, 1 + d for
digit d; a pixel belongs to a digit when its intensity exceeds `threshold` (default 127, half
of full ink; the faint anti-aliased rim stays background). Train images are built from MNIST
train, test images from MNIST test, and everything is a pure function of `seed`.

    train, test = mnist_segmentation.load(num_train=10_000, num_test=2_000)
    train.images  # uint8 [N, 64, 64, 1]
    train.masks   # uint8 [N, 64, 64], values in 0..10

The training loop reads it as dataset 'mnist_segmentation' (source 'bundled'; sizes and seed in
`config.data.segmentation`), its labels being the masks; `load_cached` keeps the last sets made
in this process, so a report that reloads the data does not generate them again.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np

from cnn_jax.datasets import mnist_idx

NUM_CLASSES = 11  # background + ten digits
BACKGROUND = 0
_MAX_TRIES = 200  # random positions tried per digit before it is left out


class SegmentationSet(NamedTuple):
  images: np.ndarray  # uint8 [N, H, W, 1]
  masks: np.ndarray  # uint8 [N, H, W]: 0 background, 1 + d for digit d
  digits: np.ndarray  # int32 [N, max_digits]: the pasted digits' labels, -1 where none
  boxes: np.ndarray  # int32 [N, max_digits, 4]: (top, left, height, width) of each ink box


def _ink_crop(image: np.ndarray) -> np.ndarray:
  """A 28x28 digit cropped to the bounding box of its non-zero pixels."""
  rows = np.flatnonzero(image.any(axis=1))
  cols = np.flatnonzero(image.any(axis=0))
  if rows.size == 0:
    return image[:1, :1]
  return image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _overlaps(box, boxes) -> bool:
  t, l, h, w = box
  return any(t < t2 + h2 and t2 < t + h and l < l2 + w2 and l2 < l + w
             for t2, l2, h2, w2 in boxes)


def generate(source_images: np.ndarray, source_labels: np.ndarray, num_images: int, *,
             size: int = 64, min_digits: int = 1, max_digits: int = 3, threshold: int = 127,
             seed: int | np.random.SeedSequence = 0) -> SegmentationSet:
  """Builds `num_images` canvases from MNIST-like digits (uint8 [M, 28, 28] or [M, 28, 28, 1]).

  Per image: k ~ U{min_digits..max_digits} digits drawn uniformly from the source, each placed
  uniformly at random where its ink box overlaps no earlier box (a digit that finds no place in
  a few hundred tries is left out; at 64x64 and 3 digits this does not happen in practice).
  """
  src = np.asarray(source_images)
  if src.ndim == 4:
    src = src[..., 0]
  labels = np.asarray(source_labels)
  if src.ndim != 3 or len(src) != len(labels) or src.dtype != np.uint8:
    raise ValueError(f'generate needs uint8 digits [M, h, w] and M labels, got {src.shape} '
                     f'{src.dtype} and {labels.shape}.')
  if not 1 <= min_digits <= max_digits:
    raise ValueError(f'Need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}.')
  if size < max(src.shape[1:]):
    raise ValueError(f'size={size} is smaller than a digit ({src.shape[1]}x{src.shape[2]}).')
  rng = np.random.default_rng(seed)
  images = np.zeros((num_images, size, size), np.uint8)
  masks = np.zeros((num_images, size, size), np.uint8)
  digits = np.full((num_images, max_digits), -1, np.int32)
  boxes = np.zeros((num_images, max_digits, 4), np.int32)
  for n in range(num_images):
    k = int(rng.integers(min_digits, max_digits + 1))
    placed = []
    for idx in rng.integers(0, len(src), size=k):
      crop = _ink_crop(src[idx])
      h, w = crop.shape
      for _ in range(_MAX_TRIES):
        top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        if not _overlaps((top, left, h, w), placed):
          break
      else:
        continue
      slot = len(placed)
      placed.append((top, left, h, w))
      images[n, top:top + h, left:left + w] = crop
      masks[n, top:top + h, left:left + w] = np.where(crop > threshold, 1 + labels[idx],
                                                      BACKGROUND)
      digits[n, slot] = labels[idx]
      boxes[n, slot] = (top, left, h, w)
  return SegmentationSet(images[..., None], masks, digits, boxes)


def load(data_dir: str | os.PathLike | None = None, *, num_train: int = 60_000,
         num_test: int = 10_000, size: int = 64, min_digits: int = 1, max_digits: int = 3,
         threshold: int = 127, seed: int = 0) -> tuple[SegmentationSet, SegmentationSet]:
  """(train, test) from the bundled MNIST (or the IDX files in `data_dir`).

  Train canvases use only MNIST train digits and test canvases only MNIST test digits; the two
  draw from independent streams of `seed`, so changing `num_train` leaves test unchanged.
  """
  (train_x, train_y), (test_x, test_y) = mnist_idx.load(data_dir)
  train_seed, test_seed = np.random.SeedSequence(seed).spawn(2)
  kwargs = dict(size=size, min_digits=min_digits, max_digits=max_digits, threshold=threshold)
  return (generate(train_x, train_y, num_train, seed=train_seed, **kwargs),
          generate(test_x, test_y, num_test, seed=test_seed, **kwargs))


@functools.lru_cache(maxsize=2)
def load_cached(data_dir: str | None = None, **kwargs) -> tuple[SegmentationSet, SegmentationSet]:
  """`load` remembered per arguments (the arrays are shared: do not write into them)."""
  train, test = load(data_dir, **kwargs)
  for part in (*train, *test):
    part.setflags(write=False)
  return train, test


__all__ = ['NUM_CLASSES', 'BACKGROUND', 'SegmentationSet', 'generate', 'load', 'load_cached']
