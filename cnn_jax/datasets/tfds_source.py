"""Named datasets through tensorflow-datasets.

Reads a prepared copy with `tfds.data_source` (array_record files, no TensorFlow needed); a
tfrecord copy, or a download, goes through `tfds.load`, which needs tensorflow-cpu installed.
"""
from __future__ import annotations

import numpy as np

from cnn_jax.datasets.splits import DataError


def load(name: str, data_dir: str | None, download: bool):
  import tensorflow_datasets as tfds  # TFDS sources only (a slow import)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # unknown name, unreadable folder
    raise DataError(f'TFDS cannot open dataset {name!r} in data_dir={data_dir!r}: {e}') from e
  if not builder.is_prepared() and download:
    _require_tensorflow(name)
    builder.download_and_prepare()
  try:
    return tuple(_split(builder, s) for s in ('train', 'test'))
  except _NotPrepared:
    raise DataError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it where there is '
        f'network (`tfds build {name} --data_dir=DIR`, then --config.data.data_dir=DIR), or set '
        f'--config.data.tfds_download=True, or use --config.data.source=bundled where the '
        f'dataset ships with the repository.') from None


class _NotPrepared(Exception):
  pass


def _split(builder, split):
  import tensorflow_datasets as tfds  # TFDS sources only (a slow import)
  try:
    source = builder.as_data_source(split=split)
    rows = [source[i] for i in range(len(source))]
    images = np.stack([r['image'] for r in rows])
    labels = np.asarray([r['label'] for r in rows])
  except (NotImplementedError, ValueError, KeyError):  # not array_record: read through tf.data
    if not builder.is_prepared():
      raise _NotPrepared() from None
    _require_tensorflow(builder.name)
    ds = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = ds['image'], ds['label']
  if images.ndim == 3:
    images = images[..., None]
  return images.astype(np.uint8), labels.astype(np.int32)


def _require_tensorflow(name):
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (optional)
  except ImportError as e:
    raise DataError(f'Reading or preparing TFDS dataset {name!r} in tfrecord format needs '
                    'TensorFlow: `pip install tensorflow-cpu==2.21.0`.') from e
