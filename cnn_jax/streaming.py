"""Streamed data, for datasets too large to live on the device (ImageNet): `data.pipeline='stream'`.

The on-device pipeline (cnn_jax.input_pipeline) keeps a whole dataset on the accelerator as
uint8; ImageNet's 1.28M training images at 256x256 are ~250 GB, so here each batch is decoded on
the host from a random-access source, by a pool of threads ahead of the step (`prefetch` batches
in flight), and handed to the jitted step as a batch-sharded array. Everything after decoding
(normalisation, random crops, flips, PCA colour jitter) still runs inside jit on the device, with
the same functions and RNG streams as the on-device pipeline.

Sources (random access, `len(s)` and `s[i] -> (uint8 [H, W, C], label)`):
  * an image folder, `split/class/*.{png,jpg,jpeg}` (the layout and checks of
    cnn_jax.datasets.image_folder), decoded per image, each shorter side scaled to `data.resize`
    and the central square kept, as Krizhevsky et al. prepared ImageNet;
  * a prepared TFDS dataset in array_record format, through `tfds.data_source` (no TensorFlow).

The batches are a pure function of (seed, step): the training order of epoch e is
`input_pipeline.epoch_permutation(data_rng, e, N)`, the very permutation the on-device pipeline
uses, and the validation split and training subset are carved with the same seeded order as
`datasets.carve_validation`. So a streamed run resumes exactly where it stopped, and on a dataset
small enough for both pipelines it reproduces the on-device run (tests/test_streaming.py). In a
multi-process run each process decodes only its own share of every global batch.

The per-channel mean and std (and the PCA for colour jitter) come from `data.stats_images`
training images (a fixed random sample; all of them when there are fewer).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import pathlib
import queue
import threading
from typing import Any, Iterator, Protocol, Sequence

import jax
import numpy as np
from PIL import Image

from cnn_jax import datasets, input_pipeline, parallel
from cnn_jax.datasets import image_folder
from cnn_jax.datasets.splits import DataError, channel_mean_std, split_indices


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> tuple[np.ndarray, int]: ...


@dataclasses.dataclass(frozen=True)
class FolderSource:
  """One split of an image folder, decoded image by image."""
  root: pathlib.Path
  files: Sequence[str]  # relative to root, in load order
  labels: np.ndarray
  resize: int = 0
  channels: int = 3

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    image = image_folder.decode(self.root / self.files[i], self.resize)
    if image.ndim == 2:  # grayscale in a colour folder: every channel
      image = np.repeat(image[..., None], self.channels, axis=-1)
    return image, int(self.labels[i])


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """One split of a TFDS data source ({'image': uint8 [H, W, C], 'label': int} records)."""
  records: Any  # tfds.data_source(...) or any sequence of such dicts
  resize: int = 0

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    record = self.records[int(i)]
    image = np.asarray(record['image'], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if self.resize:
      img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
      image = np.asarray(image_folder.resize_center_crop(img, self.resize), np.uint8)
      image = image[..., None] if image.ndim == 2 else image
    return image, int(record['label'])


@dataclasses.dataclass(frozen=True)
class Subset:
  """The items `indices` of a source, in that order."""
  source: Source
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
    return self.source[int(self.indices[i])]


@dataclasses.dataclass(frozen=True)
class StreamSplits:
  """What `load` returns: the splits as sources, and the statistics of the training split."""
  name: str
  source: str  # how reports name the data
  num_classes: int
  train: Source
  val: Source
  test: Source
  mean: np.ndarray  # per-channel, in [0, 1], from `sample`
  std: np.ndarray
  image_shape: tuple[int, int, int]
  sample: np.ndarray  # uint8 [n, H, W, C] training images the statistics (and PCA) come from

  @property
  def num_train(self) -> int:
    return len(self.train)

  def stats_images(self) -> np.ndarray:
    return self.sample


def load(data, folder_default=None) -> StreamSplits:
  """The splits of `data.dataset` as sources: `data.source='folder'` (data.data_dir, or the
  dataset's default folder `folder_default`) or `'tfds'`."""
  unsupported = [k for k in ('select_classes', 'per_class') if data[k]]
  if unsupported:
    raise ValueError(f"config.data.{unsupported[0]} is not supported with data.pipeline='stream'; "
                     "use data.pipeline='device' (the dataset must fit in memory) or a folder "
                     'that holds only the classes and images you want.')
  if data.source == 'folder':
    root = pathlib.Path(data.data_dir).expanduser() if data.data_dir else folder_default
    if root is None:
      raise ValueError(f'Dataset {data.dataset!r} has no default image folder; set '
                       f'--config.data.data_dir=DIR, a folder laid out as {image_folder.LAYOUT}.')
    listing = image_folder.list_images(root, ('train', 'test'))
    first = image_folder.decode(root / listing.files['train'][0], data.resize)
    channels = 3 if first.ndim == 3 else 1
    train, test = (FolderSource(root, listing.files[s], listing.labels[s], data.resize,
                                channels) for s in ('train', 'test'))
    num_classes, label = len(listing.class_names), f'image folder {root.name}, streamed'
  elif data.source == 'tfds':
    train, test, num_classes = _tfds_sources(data)
    label = 'tfds, streamed'
  else:
    raise ValueError(f"data.pipeline='stream' reads data.source='folder' or 'tfds', not "
                     f'{data.source!r}; the bundled datasets fit on the device: use '
                     "data.pipeline='device'.")
  return carve(data.dataset, label, num_classes, train, test, data.validation_size,
               data.split_seed, data.train_subset, data.stats_images)


def carve(name, label, num_classes, train: Source, test: Source, validation_size: int,
          split_seed: int, train_subset: int = 0, stats_images: int = 2000) -> StreamSplits:
  """Validation split and training subset with the seeded order of datasets.carve_validation."""
  val_idx, train_idx = split_indices(len(train), validation_size, split_seed, train_subset)
  train_src = Subset(train, train_idx)
  picks = (np.arange(len(train_src)) if stats_images >= len(train_src) else
           np.sort(np.random.default_rng(split_seed + 1).choice(len(train_src), stats_images,
                                                                replace=False)))
  with concurrent.futures.ThreadPoolExecutor(default_workers()) as pool:
    sample = decode_batch(train_src, picks, pool)[0]
  mean, std = channel_mean_std(sample)
  return StreamSplits(name=name, source=label, num_classes=num_classes, train=train_src,
                      val=Subset(train, val_idx), test=test, mean=mean, std=std,
                      image_shape=tuple(sample.shape[1:]), sample=sample)


TFDS_TEST_SPLIT = {'imagenet2012': 'validation'}  # where TFDS has no labelled 'test' split


def _tfds_sources(data):
  import tensorflow_datasets as tfds  # TFDS sources only (a slow import)
  try:
    builder = tfds.builder(data.dataset, data_dir=data.data_dir or None)
    sources = [builder.as_data_source(split=s)
               for s in ('train', TFDS_TEST_SPLIT.get(data.dataset, 'test'))]
  except Exception as e:  # not prepared, not array_record, unknown
    raise DataError(
        f'TFDS dataset {data.dataset!r} has no prepared array_record copy in '
        f'data_dir={data.data_dir!r} ({e}). Prepare one where there is network '
        f'(`tfds build {data.dataset} --data_dir=DIR --file_format=array_record`) and set '
        '--config.data.data_dir=DIR.') from e
  num_classes = builder.info.features['label'].num_classes
  return TfdsSource(sources[0], data.resize), TfdsSource(sources[1], data.resize), num_classes


def decode_batch(source: Source, indices, pool: concurrent.futures.Executor | None = None):
  """(uint8 [n, H, W, C], int32 [n]) of the items `indices`; a DataError names the image."""
  items = list(pool.map(source.__getitem__, indices) if pool else map(source.__getitem__, indices))
  shapes = {item[0].shape for item in items}
  if len(shapes) > 1:
    raise DataError(f'Images of one batch differ in shape ({", ".join(map(str, sorted(shapes)))}). '
                    'Set --config.data.resize=S to scale each shorter side to S and keep the '
                    'central S x S square.')
  images = np.stack([item[0] for item in items]) if items else np.zeros((0, 1, 1, 1), np.uint8)
  return images, np.asarray([item[1] for item in items], np.int32)


default_workers = image_folder.num_cpus


class _Prefetcher:
  """Runs `produce(i)` for i = 0, 1, ... in a background thread, up to `depth` ahead; an error
  there is raised in the consumer at the item it belongs to."""

  def __init__(self, produce, count: int, depth: int):
    self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(produce, count), daemon=True)
    self._thread.start()

  def _run(self, produce, count):
    for i in range(count):
      if self._stop.is_set():
        return
      try:
        item = (produce(i), None)
      except BaseException as e:  # pylint: disable=broad-except  (handed to the consumer)
        item = (None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[1] is not None:
        return

  def get(self):
    value, error = self._queue.get()
    if error is not None:
      raise error
    return value

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)


class Stream:
  """Decodes the batches of training and evaluation on the host and places them on the mesh."""

  def __init__(self, splits: StreamSplits, batch_size: int, steps_per_epoch: int, data_rng,
               batch_sharding, *, train_eval: Source | None = None, workers: int = 0,
               prefetch: int = 2):
    """`data_rng` is the loop's data key: the order of epoch e is
    input_pipeline.epoch_permutation(data_rng, e, N), as in the on-device pipeline, computed
    here on this process's host CPU (threefry is bit-exact across backends; a computation on
    the mesh, launched from the decoding thread, could interleave with the step's collectives);
    `train_eval`: the fixed training images evaluated without augmentation."""
    self.splits = splits
    self.train_eval = train_eval
    self.batch_size = batch_size
    self.steps_per_epoch = steps_per_epoch
    self.sharding = batch_sharding
    self.prefetch = prefetch
    self._pool = concurrent.futures.ThreadPoolExecutor(workers or default_workers())
    host = jax.local_devices(backend='cpu')[0]
    self._permutation = jax.jit(functools.partial(input_pipeline.epoch_permutation,
                                                  num_examples=splits.num_train))
    self._data_rng = jax.device_put(data_rng, host)
    self._perm_cache: tuple[int, np.ndarray] | None = None
    self._train: _Prefetcher | None = None

  def _local(self, global_batch: int) -> slice:
    """This process's share of a global batch (processes hold equal, contiguous shares)."""
    share = global_batch // parallel.process_count()
    start = jax.process_index() * share
    return slice(start, start + share)

  def _place(self, images, labels, mask=None):
    arrays = (images, labels) if mask is None else (images, labels, mask)
    return tuple(jax.make_array_from_process_local_data(self.sharding, a) for a in arrays)

  def epoch_order(self, epoch: int) -> np.ndarray:
    if self._perm_cache is None or self._perm_cache[0] != epoch:
      perm = self._permutation(self._data_rng, np.int32(epoch))
      self._perm_cache = (epoch, np.asarray(jax.device_get(perm)))
    return self._perm_cache[1]

  def train_indices(self, step: int) -> np.ndarray:
    """The training images of global step `step` (drop-remainder epochs)."""
    epoch, in_epoch = divmod(step, self.steps_per_epoch)
    order = self.epoch_order(epoch)
    return order[in_epoch * self.batch_size:(in_epoch + 1) * self.batch_size]

  def start(self, start_step: int, total_steps: int) -> None:
    """Starts decoding the training batches from `start_step` on, in order."""
    self.close_train()
    local = self._local(self.batch_size)

    def produce(i):
      idx = self.train_indices(start_step + i)[local]
      return decode_batch(self.splits.train, idx, self._pool)

    self._train = _Prefetcher(produce, total_steps - start_step, self.prefetch)

  def next_train(self) -> tuple[jax.Array, jax.Array]:
    """The next training batch as global arrays, sharded over the batch axis."""
    return self._place(*self._train.get())

  def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[jax.Array, ...]]:
    """(images, labels, mask) per padded batch of an evaluation split."""
    source = getattr(self.splits, split) if split != 'train_eval' else self.train_eval
    n = len(source)
    num_batches = -(-n // batch_size)
    local = self._local(batch_size)

    def produce(b):
      idx = np.arange(b * batch_size, (b + 1) * batch_size)[local]
      real = idx < n
      images, labels = decode_batch(source, np.where(real, idx, 0), self._pool)
      return images, labels, real

    feed = _Prefetcher(produce, num_batches, self.prefetch)
    try:
      for _ in range(num_batches):
        yield self._place(*feed.get())
    finally:
      feed.close()

  def close_train(self) -> None:
    if self._train is not None:
      self._train.close()
      self._train = None

  def close(self) -> None:
    self.close_train()
    self._pool.shutdown(wait=False, cancel_futures=True)


def load_dataset(data) -> StreamSplits:
  """`data.dataset` as random-access sources decoded batch by batch (data.pipeline='stream'):
  an image folder or a prepared TFDS array_record copy."""
  folder, num_classes = datasets.stream_defaults(data)
  splits = load(data, folder.path if folder is not None else None)
  if data.source == 'folder' and folder is not None and not data.data_dir:
    splits = dataclasses.replace(splits, source=f'{folder.label}, streamed')
  if num_classes is not None and splits.num_classes != num_classes:
    raise DataError(f'The streamed {data.dataset} data have {splits.num_classes} classes, not '
                    f'{num_classes}. Point --config.data.data_dir at a {data.dataset} copy, or use '
                    "--config.data.dataset=image_folder for this folder's own classes.")
  return splits
