"""The Oxford-IIIT Pet segmentation set through tensorflow-datasets (`oxford_iiit_pet`), for U-Net.

Each image comes with a trimap; the masks here use 0 = background, 1 = pet, 2 = the pet's
outline (TFDS's values 2, 1 and 3), every class counted. Images are resized to `size` x `size`
(bilinear) and masks alike (nearest neighbour, so no new class values appear); the aspect ratio is
not kept. Train is TFDS's 'train' split (3,680 images), test its 'test' split (3,669).

Offline this needs a prepared copy (`tfds build oxford_iiit_pet --data_dir=DIR` where there is
network, then --config.data.data_dir=DIR), or --config.data.tfds_download=True with network.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from cnn_jax.datasets.splits import DataError

NAME = 'oxford_iiit_pet'
NUM_CLASSES = 3  # background, pet, outline
CLASS_NAMES = ('background', 'pet', 'outline')
_TRIMAP_TO_CLASS = np.array([0, 1, 0, 2], np.uint8)  # TFDS trimap 1 pet, 2 background, 3 outline


def trimap_to_mask(trimap: np.ndarray) -> np.ndarray:
  """TFDS trimap values (1 pet, 2 background, 3 outline) -> classes 0 background, 1 pet, 2 outline."""
  trimap = np.asarray(trimap)
  if trimap.ndim == 3:
    trimap = trimap[..., 0]
  if trimap.size and (trimap.min() < 1 or trimap.max() > 3):
    raise DataError(f'{NAME}: a segmentation_mask has values outside 1..3 '
                    f'({int(trimap.min())}..{int(trimap.max())}); the TFDS copy is not the '
                    'expected version.')
  return _TRIMAP_TO_CLASS[trimap]


def resize_pair(image: np.ndarray, trimap: np.ndarray, size: int):
  """uint8 image [h, w, 3] and trimap [h, w, 1] -> image [size, size, 3] and mask [size, size]."""
  img = Image.fromarray(np.asarray(image, np.uint8)).convert('RGB')
  img = np.asarray(img.resize((size, size), Image.BILINEAR), np.uint8)
  mask = trimap_to_mask(trimap)
  mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), np.uint8)
  return img, mask


def load(data_dir: str | None, download: bool, size: int = 128):
  """((train images, masks), (test images, masks)): uint8 [N, size, size, 3] and [N, size, size]."""
  try:
    import tensorflow_datasets as tfds  # TFDS sources only (a slow import)
  except ImportError as e:
    raise DataError(f'{NAME} is read with tensorflow-datasets: `pip install '
                    'tensorflow-datasets`.') from e
  try:
    builder = tfds.builder(NAME, data_dir=data_dir)
  except Exception as e:  # unreadable folder
    raise DataError(f'TFDS cannot open {NAME!r} in data_dir={data_dir!r}: {e}') from e
  if not builder.is_prepared():
    if not download:
      raise DataError(
          f'TFDS dataset {NAME!r} is not prepared in {builder.data_dir}. Prepare it where there '
          f'is network (`tfds build {NAME} --data_dir=DIR`, then --config.data.data_dir=DIR), or '
          'set --config.data.tfds_download=True, or use --config.data.dataset=mnist_segmentation '
          '(generated offline from the bundled MNIST).')
    builder.download_and_prepare()
  return tuple(_split(builder, split, size) for split in ('train', 'test'))


def _split(builder, split: str, size: int):
  try:
    source = builder.as_data_source(split=split)
    rows = (source[i] for i in range(len(source)))
  except (NotImplementedError, ValueError, KeyError):  # tfrecord copy: through tf.data
    import tensorflow_datasets as tfds  # TFDS sources only (a slow import)
    try:
      rows = tfds.as_numpy(builder.as_dataset(split=split))
    except ImportError as e:
      raise DataError(f'Reading {NAME!r} in tfrecord format needs TensorFlow: `pip install '
                      'tensorflow-cpu`.') from e
  pairs = [resize_pair(r['image'], r['segmentation_mask'], size) for r in rows]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
