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


def carve_validation(name, source, num_classes, train, test, validation_size, split_seed,
                     train_subset=0) -> Splits:
  """Takes `validation_size` random train images as the validation split (fixed by `split_seed`);
  `train_subset` > 0 keeps only that many of the rest for training (the same ones for every seed)."""
  images, labels = train
  if not 0 <= validation_size < len(images):
    raise ValueError(f'data.validation_size={validation_size} must be in [0, {len(images)}).')
  order = np.random.default_rng(split_seed).permutation(len(images))
  val_idx, train_idx = np.sort(order[:validation_size]), order[validation_size:]
  if train_subset:
    if not 0 < train_subset <= len(train_idx):
      raise ValueError(f'data.train_subset={train_subset} must be in [1, {len(train_idx)}].')
    train_idx = train_idx[:train_subset]
  train_idx = np.sort(train_idx)
  train_images = images[train_idx]
  mean, std = channel_mean_std(train_images)
  return Splits(
      name=name, source=source, num_classes=num_classes,
      train=(train_images, labels[train_idx]),
      val=(images[val_idx], labels[val_idx]),
      test=test,
      mean=mean, std=std)


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
