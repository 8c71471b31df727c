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


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Static preprocessing settings, closed over by the jitted steps."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int = 0  # centred zero padding to this square size; 0 = keep
  normalize: bool = True
  random_crop_padding: int = 0
  horizontal_flip: bool = False

  @classmethod
  def from_config(cls, data_config, splits) -> 'Preprocess':
    h, w, _ = splits.image_shape
    if data_config.image_size and data_config.image_size < max(h, w):
      raise ValueError(f'config.data.image_size={data_config.image_size} is smaller than the '
                       f'{splits.name} images ({h}x{w}); it only pads, it does not crop or resize.')
    return cls(mean=tuple(map(float, splits.mean)), std=tuple(map(float, splits.std)),
               image_size=data_config.image_size, normalize=data_config.normalize,
               random_crop_padding=data_config.random_crop_padding,
               horizontal_flip=data_config.horizontal_flip)

  def output_shape(self, image_shape) -> tuple[int, int, int]:
    h, w, c = image_shape
    return (self.image_size or h, self.image_size or w, c)

  def __call__(self, images: jax.Array, rng: jax.Array | None, train: bool) -> jax.Array:
    """uint8 [N, H, W, C] -> float32 [N, H', W', C]; augmentation only when train and rng."""
    x = images.astype(jnp.float32) / 255.0
    if self.normalize:
      x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    if self.image_size:
      x = _pad_to(x, self.image_size, value=0.0 if not self.normalize else
                  -jnp.asarray(self.mean) / jnp.asarray(self.std))
    if train and rng is not None:
      crop_rng, flip_rng = jax.random.split(rng)
      if self.random_crop_padding:
        x = random_crop(crop_rng, x, self.random_crop_padding)
      if self.horizontal_flip:
        flip = jax.random.bernoulli(flip_rng, 0.5, (x.shape[0], 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1, :], x)
    return x


def _pad_to(x, size, value):
  """Centred padding of NHWC images to size x size with the given (per-channel) value."""
  h, w = x.shape[1:3]
  top, left = (size - h) // 2, (size - w) // 2
  canvas = jnp.broadcast_to(jnp.asarray(value, x.dtype), (x.shape[0], size, size, x.shape[3]))
  return jax.lax.dynamic_update_slice(canvas, x, (0, top, left, 0))


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
