"""MNIST from the four official IDX files bundled in data/mnist/, verified by checksum."""
from __future__ import annotations

import gzip
import hashlib
import os
import pathlib

import numpy as np

from cnn_jax.datasets.splits import DataError

DEFAULT_DIR = pathlib.Path(__file__).resolve().parents[2] / 'data' / 'mnist'

# md5 of each gzip file as shipped (see data/README.md for provenance).
FILES = {
    'train_images': ('train-images-idx3-ubyte.gz', '56f11203c65dcbeead45b51e76a4d637'),
    'train_labels': ('train-labels-idx1-ubyte.gz', 'd53e105ee54ea40749a09fcbcd1e9432'),
    'test_images': ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
    'test_labels': ('t10k-labels-idx1-ubyte.gz', 'ec29112dd5afa0611ce80d1b7f02629c'),
}
_FIX = ('Restore it with `git checkout -- data/mnist/` (or copy the official file into that folder), '
        'or point --config.data.data_dir at a folder holding the four MNIST IDX .gz files.')


def load(data_dir: str | os.PathLike | None = None, verify: bool = True):
  """Returns ((train_images, train_labels), (test_images, test_labels)), images uint8 [N, 28, 28, 1]."""
  folder = pathlib.Path(data_dir) if data_dir else DEFAULT_DIR
  arrays = {key: _read(folder / fname, md5 if verify else None) for key, (fname, md5) in FILES.items()}
  for split in ('train', 'test'):
    n_img, n_lab = len(arrays[f'{split}_images']), len(arrays[f'{split}_labels'])
    if n_img != n_lab:
      raise DataError(f'MNIST {split}: {n_img} images but {n_lab} labels in {folder}. {_FIX}')
  return ((arrays['train_images'][..., None], arrays['train_labels'].astype(np.int32)),
          (arrays['test_images'][..., None], arrays['test_labels'].astype(np.int32)))


def _read(path: pathlib.Path, md5: str | None) -> np.ndarray:
  if not path.is_file():
    raise DataError(f'MNIST file missing: {path}. {_FIX}')
  raw = path.read_bytes()
  if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
    raise DataError(f'MNIST file corrupt: {path} has md5 {hashlib.md5(raw).hexdigest()}, '
                    f'expected {md5}. {_FIX}')
  try:
    data = gzip.decompress(raw)
  except (OSError, EOFError) as e:
    raise DataError(f'MNIST file corrupt: {path} is not a readable gzip file ({e}). {_FIX}') from e
  return parse_idx(data, path)


def parse_idx(data: bytes, path) -> np.ndarray:
  """Parses an IDX file: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian sizes, raw data."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise DataError(f'{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r}). {_FIX}')
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  if len(data) != header + int(np.prod(shape)):
    raise DataError(f'{path} is truncated: header says {shape}, '
                    f'{len(data) - header} data bytes present. {_FIX}')
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)
