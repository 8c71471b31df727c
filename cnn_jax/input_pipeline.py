"""On-device data: a small dataset lives on the accelerator as uint8; batches are drawn,
normalised, padded and augmented inside jit from an explicit RNG, so the same seed gives
the same run and the host never touches a batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import augment


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Static preprocessing settings, closed over by the jitted steps."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int = 0  # centred zero padding to this square size; 0 = keep
  normalize: bool = True
  random_crop_padding: int = 0
  horizontal_flip: bool = False
  crop_size: int = 0  # random crop for training, central crop for evaluation; 0 = off
  pca_jitter_std: float = 0.0  # AlexNet's PCA colour jitter (cnn_jax.augment); 0 = off
  pca_eigvals: tuple[float, ...] = ()  # the train split's RGB PCA, pixels in [0, 1]
  pca_eigvecs: tuple[tuple[float, ...], ...] = ()

  @classmethod
  def from_config(cls, data_config, splits) -> 'Preprocess':
    h, w, c = splits.image_shape
    if data_config.image_size and data_config.image_size < max(h, w):
      raise ValueError(f'config.data.image_size={data_config.image_size} is smaller than the '
                       f'{splits.name} images ({h}x{w}); it only pads, it does not crop or resize.')
    side = data_config.image_size or min(h, w)
    if data_config.crop_size > side:
      raise ValueError(f'config.data.crop_size={data_config.crop_size} is larger than the '
                       f'{splits.name} images ({h}x{w}); set it to at most {side}, or scale the '
                       'images up with --config.data.resize.')
    pca = {}
    if data_config.pca_jitter_std:
      if c != 3:
        raise ValueError(f'config.data.pca_jitter_std needs RGB images; {splits.name} has {c} '
                         'channel(s). Set it to 0.')
      eig = augment.rgb_pca(splits.stats_images())
      pca = {'pca_eigvals': tuple(map(float, eig.eigvals)),
             'pca_eigvecs': tuple(tuple(map(float, row)) for row in eig.eigvecs)}
    return cls(mean=tuple(map(float, splits.mean)), std=tuple(map(float, splits.std)),
               image_size=data_config.image_size, normalize=data_config.normalize,
               random_crop_padding=data_config.random_crop_padding,
               horizontal_flip=data_config.horizontal_flip, crop_size=data_config.crop_size,
               pca_jitter_std=float(data_config.pca_jitter_std), **pca)

  def output_shape(self, image_shape) -> tuple[int, int, int]:
    h, w, c = image_shape
    h, w = self.image_size or h, self.image_size or w
    return (self.crop_size or h, self.crop_size or w, c)

  def __call__(self, images: jax.Array, rng: jax.Array | None, train: bool) -> jax.Array:
    """uint8 [N, H, W, C] -> float32 [N, H', W', C]; augmentation only when train and rng."""
    x = images.astype(jnp.float32) / 255.0
    augmenting = train and rng is not None
    if augmenting and self.pca_jitter_std:  # in [0, 1] units, before normalising (augment.py)
      x = augment.pca_color_jitter(jax.random.fold_in(rng, 1), x, self.pca_eigvals,
                                   self.pca_eigvecs, self.pca_jitter_std)
    if self.normalize:
      x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    if self.image_size:
      x = _pad_to(x, self.image_size, value=0.0 if not self.normalize else
                  -jnp.asarray(self.mean) / jnp.asarray(self.std))
    if self.crop_size:
      x = (random_window(jax.random.fold_in(rng, 2), x, self.crop_size) if augmenting
           else center_window(x, self.crop_size))
    if augmenting:
      crop_rng, flip_rng = jax.random.split(rng)
      if self.random_crop_padding:
        x = random_crop(crop_rng, x, self.random_crop_padding)
      if self.horizontal_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


  def ten_crop_views(self, images: jax.Array) -> list[jax.Array]:
    """AlexNet's test views of uint8 [N, H, W, C]: the four corner and the central crop_size
    windows, and their mirrors, each as evaluation preprocesses it."""
    if not self.crop_size:
      raise ValueError('ten_crop_views needs crop_size > 0.')
    x = dataclasses.replace(self, crop_size=0)(images, None, train=False)  # the whole image
    h, w, s = x.shape[1], x.shape[2], self.crop_size
    corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
    views = [x[:, t:t + s, l:l + s, :] for t, l in corners]
    return views + [v[:, :, ::-1, :] for v in views]


def _pad_to(x, size, value):
  """Centred padding of NHWC images to size x size with the given (per-channel) value."""
  h, w = x.shape[1:3]
  top, left = (size - h) // 2, (size - w) // 2
  canvas = jnp.broadcast_to(jnp.asarray(value, x.dtype), (x.shape[0], size, size, x.shape[3]))
  return jax.lax.dynamic_update_slice(canvas, x, (0, top, left, 0))


def random_window(rng, x, size):
  """A random size x size window of each image (AlexNet's 227 crops of 256 x 256 images)."""
  n, h, w, c = x.shape
  tops = jax.random.randint(rng, (n,), 0, h - size + 1)
  lefts = jax.random.randint(jax.random.fold_in(rng, 1), (n,), 0, w - size + 1)
  crop = lambda img, t, l: jax.lax.dynamic_slice(img, (t, l, 0), (size, size, c))
  return jax.vmap(crop)(x, tops, lefts)


def center_window(x, size):
  """The central size x size window of every image (evaluation's view of a random crop)."""
  h, w = x.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return x[:, top:top + size, left:left + size, :]


def random_crop(rng, x, padding):
  """Zero-pads by `padding` and takes a random crop of the original size per image."""
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def epoch_permutation(rng: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
  """The order of the training set in `epoch`: a pure function of (rng, epoch)."""
  return jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)


def take_batch(images, labels, perm, step_in_epoch, batch_size):
  """The `step_in_epoch`-th batch of the permuted training set (drop-remainder epochs)."""
  idx = jax.lax.dynamic_slice_in_dim(perm, step_in_epoch * batch_size, batch_size)
  return images[idx], labels[idx]


def padded_eval_arrays(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """Pads an evaluation split to whole batches; `mask` marks the real examples."""
  n = len(images)
  total = -(-n // batch_size) * batch_size
  pad = total - n
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,) + labels.shape[1:], labels.dtype)])
  mask = np.arange(total) < n
  return images, labels, mask


def device_put_replicated(tree: Any, sharding) -> Any:
  """Places host arrays on every device of the mesh (each host holds the whole small dataset)."""
  return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda i: a[i]),
                      tree)
