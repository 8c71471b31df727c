"""The host-side result of loading a dataset: uint8 NHWC images and int32 labels per split."""
from __future__ import annotations

import dataclasses

import numpy as np


class DataError(RuntimeError):
  """A data file is missing, unreadable or not what it should be; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Splits:
  name: str
  source: str
  num_classes: int
  train: tuple[np.ndarray, np.ndarray]  # (uint8 [N, H, W, C], int32 [N])
  val: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray]
  mean: np.ndarray  # per-channel mean of the train split, in [0, 1]
  std: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train[0].shape[1:])

  @property
  def num_train(self) -> int:
    return len(self.train[0])

  def stats_images(self):
    """The training images the preprocessing statistics (colour PCA) are computed from."""
    return self.train[0]


def carve_validation(name, source, num_classes, train, test, validation_size, split_seed,
                     train_subset=0, classes=(), per_class=0) -> Splits:
  """Takes `validation_size` random train images as the validation split (fixed by `split_seed`);
  `train_subset` > 0 keeps only that many of the rest for training (the same ones for every seed).

  `classes` (labels) keeps only those classes in every split, relabelled 0..k-1 in the order
  given, before anything else; `per_class` > 0 then keeps that many training images of each
  class, the first ones of the same `split_seed` order, so 50 per class are part of the 100.
  """
  if classes:
    train, test, num_classes = select_classes(train, test, num_classes, classes)
  images, labels = train
  if per_class and train_subset:
    raise ValueError(f'data.per_class={per_class} and data.train_subset={train_subset} both '
                     'select training images; set one of them to 0.')
  select = (lambda idx: _per_class(idx, labels, num_classes, per_class)) if per_class else None
  val_idx, train_idx = split_indices(len(images), validation_size, split_seed, train_subset, select)
  train_images = images[train_idx]
  mean, std = channel_mean_std(train_images)
  return Splits(
      name=name, source=source, num_classes=num_classes,
      train=(train_images, labels[train_idx]),
      val=(images[val_idx], labels[val_idx]),
      test=test,
      mean=mean, std=std)


def split_indices(n: int, validation_size: int, split_seed: int, train_subset: int = 0,
                  select=None) -> tuple[np.ndarray, np.ndarray]:
  """(validation, training) indices, each sorted, of a training split of `n` images: the first
  `validation_size` of a `split_seed` permutation validate; of the rest, `select(indices)` (if
  given) or the first `train_subset` (> 0) train. Every pipeline carves with this."""
  if not 0 <= validation_size < n:
    raise ValueError(f'data.validation_size={validation_size} must be in [0, {n}).')
  order = np.random.default_rng(split_seed).permutation(n)
  val_idx, train_idx = np.sort(order[:validation_size]), order[validation_size:]
  if select is not None:
    train_idx = select(train_idx)
  if train_subset:
    if not 0 < train_subset <= len(train_idx):
      raise ValueError(f'data.train_subset={train_subset} must be in [1, {len(train_idx)}].')
    train_idx = train_idx[:train_subset]
  return val_idx, np.sort(train_idx)


def select_classes(train, test, num_classes, classes):
  """(train, test, k): only the images of `classes`, labelled by their position in `classes`."""
  classes = tuple(int(c) for c in classes)
  if np.ndim(train[1]) != 1:
    raise ValueError('data.select_classes selects image-level labels; this dataset has a label '
                     'map per image (segmentation). Set data.select_classes=().')
  if num_classes is None:
    num_classes = int(max(train[1].max(initial=-1), test[1].max(initial=-1))) + 1
  out_of_range = [c for c in classes if not 0 <= c < num_classes]
  if out_of_range:
    raise ValueError(f'data.select_classes={classes} has label {out_of_range[0]}, but the dataset '
                     f'has {num_classes} classes (labels 0..{num_classes - 1}); the nearest valid '
                     f'label is {min(max(out_of_range[0], 0), num_classes - 1)}.')
  lookup = np.full(num_classes, -1, np.int32)
  lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)

  def keep(split):
    images, labels = split
    mask = np.isin(labels, classes)
    return images[mask], lookup[labels[mask]]

  return keep(train), keep(test), len(classes)


def _per_class(train_idx, labels, num_classes, per_class):
  """The first `per_class` of each class in the (seeded) order `train_idx`; ValueError naming the
  largest valid value when a class has fewer."""
  if np.ndim(labels) != 1:
    raise ValueError('data.per_class counts image-level labels; this dataset has a label map per '
                     'image (segmentation). Use data.train_subset instead.')
  counts = np.bincount(labels[train_idx], minlength=num_classes or 0)
  if per_class > counts.min():
    raise ValueError(f'data.per_class={per_class} exceeds the {int(counts.min())} training images '
                     f'of class {int(counts.argmin())} (after the validation split); the largest '
                     f'valid value is {int(counts.min())} (or 0 = all).')
  rank = np.zeros(len(train_idx), np.int64)  # position of each image within its class
  for c in range(len(counts)):
    in_class = labels[train_idx] == c
    rank[in_class] = np.arange(in_class.sum())
  return train_idx[rank < per_class]


def channel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images, in [0, 1], from exact 256-bin histograms
  (float64 over 150M CIFAR pixels took 7 s; this takes well under one)."""
  levels = np.arange(256, dtype=np.float64) / 255.0
  flat = images.reshape(-1, images.shape[-1])
  mean, std = [], []
  for c in range(flat.shape[1]):
    counts = np.bincount(flat[:, c], minlength=256).astype(np.float64)
    m = counts @ levels / counts.sum()
    mean.append(m)
    std.append(np.sqrt(counts @ (levels - m)**2 / counts.sum()))
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)
