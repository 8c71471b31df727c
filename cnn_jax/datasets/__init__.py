"""Datasets as host arrays: one explicit table of loaders, each returning `Splits`.

Small datasets (MNIST, CIFAR) are loaded whole and then live on the accelerator
(cnn_jax.input_pipeline); a streaming pipeline for ImageNet-scale data would slot in beside it.
"""
from __future__ import annotations

import difflib

import ml_collections

from cnn_jax.datasets import mnist_idx, tfds_source
from cnn_jax.datasets.splits import Splits, DataError, carve_validation

# name -> (bundled loader or None, TFDS name, number of classes)
_DATASETS = {
    'mnist': (mnist_idx.load, 'mnist', 10),
    'fashion_mnist': (None, 'fashion_mnist', 10),
    'cifar10': (None, 'cifar10', 10),
    'cifar100': (None, 'cifar100', 100),
}


def names() -> list[str]:
  return sorted(_DATASETS)


def load(data: ml_collections.ConfigDict) -> Splits:
  """Loads `data.dataset` from `data.source` and carves the validation split from train."""
  if data.dataset not in _DATASETS:
    close = difflib.get_close_matches(data.dataset, _DATASETS, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise ValueError(f'Unknown dataset {data.dataset!r}.{hint} Known: {", ".join(names())}.')
  bundled, tfds_name, num_classes = _DATASETS[data.dataset]
  if data.source == 'bundled':
    if bundled is None:
      raise ValueError(f"Dataset {data.dataset!r} is not bundled; set --config.data.source=tfds "
                       "with a prepared --config.data.data_dir (or network and "
                       "--config.data.tfds_download=True).")
    train, test = bundled(data.data_dir or None)
  else:
    train, test = tfds_source.load(tfds_name, data.data_dir or None, download=data.tfds_download)
  return carve_validation(data.dataset, data.source, num_classes, train, test,
                          data.validation_size, data.split_seed, data.train_subset)


__all__ = ['Splits', 'DataError', 'load', 'names']
