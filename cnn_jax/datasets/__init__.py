"""Datasets as host arrays: one explicit table of loaders, each returning `Splits`.

Small datasets (MNIST, CIFAR) are loaded whole and then live on the accelerator
(cnn_jax.input_pipeline); a streaming pipeline for ImageNet-scale data would slot in beside it.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import NamedTuple

import ml_collections

from cnn_jax.datasets import image_folder, mnist_idx, mnist_segmentation, oxford_pet, tfds_source
from cnn_jax.datasets.splits import Splits, DataError, carve_validation

DATA_SOURCES = ('bundled', 'tfds', 'folder')  # config.data.source

# Data shared beside the repository: <repo root>/../shared/data.
_SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'data'

# The standard CIFAR-10 label order: label i is CIFAR10_CLASSES[i]. Image-folder labels follow the
# sorted folder names, which for these names is this order; the loader checks it.
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship',
                   'truck')


class Folder(NamedTuple):
  """A dataset's default image folder (source='folder', data.data_dir='')."""
  path: pathlib.Path
  label: str  # Splits.source when this folder is read: how reports name the data
  class_names: tuple[str, ...]  # the standard label order, checked against the folder names


_CIFAR10_JPEG = Folder(_SHARED_DATA / 'cifar10-jpeg', 'CIFAR-10 (JPEG copy)', CIFAR10_CLASSES)


def _mnist(data):
  return mnist_idx.load(data.data_dir or None)


def _mnist_segmentation(data):
  """Canvases of MNIST digits with per-pixel masks (labels uint8 [N, H, W], 0 = background)."""
  s = data.segmentation
  train, test = mnist_segmentation.load_cached(
      data.data_dir or None, num_train=s.num_train, num_test=s.num_test, size=s.size,
      max_digits=s.max_digits, seed=s.seed)
  return (train.images, train.masks), (test.images, test.masks)


def _oxford_pet(data):
  return oxford_pet.load(data.data_dir or None, data.tfds_download, size=data.segmentation.size)


# name -> (bundled loader, TFDS name or loader, default image folder, number of classes);
# None = not available that way (number of classes: taken from the folder). Loaders take the
# data config; segmentation sets give a label mask per image instead of a label.
_DATASETS = {
    'mnist': (_mnist, 'mnist', None, 10),
    'mnist_segmentation': (_mnist_segmentation, None, None, mnist_segmentation.NUM_CLASSES),
    'oxford_iiit_pet': (None, _oxford_pet, None, oxford_pet.NUM_CLASSES),
    'fashion_mnist': (None, 'fashion_mnist', None, 10),
    'cifar10': (None, 'cifar10', _CIFAR10_JPEG, 10),
    'cifar100': (None, 'cifar100', None, 100),
    'imagenet2012': (None, 'imagenet2012', None, 1000),  # streamed only (data.pipeline='stream')
    'image_folder': (None, None, None, None),  # yours: source='folder', data_dir=split/class/*.jpg
}


STREAM_ONLY = ('imagenet2012',)


def names() -> list[str]:
  return sorted(_DATASETS)


def load(data: ml_collections.ConfigDict) -> Splits:
  """Loads `data.dataset` from `data.source` and carves the validation split from train."""
  if data.dataset not in _DATASETS:
    close = difflib.get_close_matches(data.dataset, _DATASETS, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise ValueError(f'Unknown dataset {data.dataset!r}.{hint} Known: {", ".join(names())}.')
  bundled, tfds_name, folder, num_classes = _DATASETS[data.dataset]
  if data.dataset in STREAM_ONLY:
    raise ValueError(f"Dataset {data.dataset!r} does not fit in memory; set "
                     "--config.data.pipeline=stream (batches decoded on the host).")
  source = data.source
  if data.resize and source != 'folder':
    raise ValueError(f'data.resize={data.resize} applies to image folders only '
                     f'(--config.data.source=folder); data.source is {source!r}.')
  if source == 'folder':
    (train, test), num_classes, source = _load_folder(data, folder, num_classes)
  elif source not in DATA_SOURCES:
    raise ValueError(f'Unknown data.source {source!r}; one of {DATA_SOURCES}.')
  elif data.dataset == 'image_folder':
    raise ValueError(f"Dataset 'image_folder' is your own folder: set --config.data.source=folder "
                     f'and --config.data.data_dir=DIR, a folder laid out as {image_folder.LAYOUT}.')
  elif source == 'bundled':
    if bundled is None:
      also = ', or --config.data.source=folder for its image folder' if folder else ''
      raise ValueError(f"Dataset {data.dataset!r} is not bundled; set --config.data.source=tfds "
                       "with a prepared --config.data.data_dir (or network and "
                       f"--config.data.tfds_download=True){also}.")
    train, test = bundled(data)
  elif tfds_name is None:
    raise ValueError(f"Dataset {data.dataset!r} is not on TFDS; use --config.data.source=bundled.")
  elif callable(tfds_name):
    train, test = tfds_name(data)
  else:
    train, test = tfds_source.load(tfds_name, data.data_dir or None, download=data.tfds_download)
  return carve_validation(data.dataset, source, num_classes, train, test,
                          data.validation_size, data.split_seed, data.train_subset,
                          classes=tuple(data.select_classes), per_class=data.per_class)


def _load_folder(data, folder: Folder | None, num_classes: int | None):
  """(train, test), number of classes and the Splits source of an image folder."""
  if data.data_dir:
    root = pathlib.Path(data.data_dir).expanduser()
  elif folder is not None:
    root = folder.path
  else:
    raise ValueError(f'Dataset {data.dataset!r} has no default image folder; set '
                     f'--config.data.data_dir=DIR, a folder laid out as {image_folder.LAYOUT}.')
  is_default = folder is not None and root.resolve() == folder.path.resolve()
  kwargs = {'resize': data.resize}
  if is_default:
    kwargs['missing_fix'] = (f'Set --config.data.data_dir=DIR to a copy laid out as '
                             f'{image_folder.LAYOUT}, or use --config.data.source=tfds.')
  (train, test), class_names = image_folder.load(root, **kwargs)
  _check_classes(data.dataset, root, class_names, num_classes, folder)
  source = folder.label if is_default else f'image folder {root.name}'
  return (train, test), len(class_names), source


def _check_classes(name, root, class_names, num_classes, folder: Folder | None) -> None:
  found = ', '.join(class_names)
  other = "or use --config.data.dataset=image_folder to train on this folder's own classes"
  if num_classes is not None and len(class_names) != num_classes:
    raise DataError(f'{root} has {len(class_names)} class folders ({found}) but {name} has '
                    f'{num_classes} classes. Point --config.data.data_dir at a {name} folder, '
                    f'{other}.')
  if folder is not None and class_names != folder.class_names:
    raise DataError(f'The class folders of {root} ({found}) are not the {name} classes in their '
                    f'standard order ({", ".join(folder.class_names)}); labels follow the sorted '
                    f'folder names. Rename the folders, {other}.')


__all__ = ['Splits', 'DataError', 'CIFAR10_CLASSES', 'load', 'load_stream', 'names']


def stream_defaults(data: ml_collections.ConfigDict) -> tuple[Folder | None, int | None]:
  """`data.dataset`'s default image folder and class count, for cnn_jax.streaming."""
  if data.dataset not in _DATASETS:
    load(data)  # the unknown-name error, with its suggestions
  _, _, folder, num_classes = _DATASETS[data.dataset]
  return folder, num_classes
