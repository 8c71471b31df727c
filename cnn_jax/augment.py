"""Colour augmentation: AlexNet's PCA colour jitter ("fancy PCA"; claim C16).

Krizhevsky, Sutskever & Hinton 2012, section 4.1: PCA on the RGB pixel values of the whole
training set; to every pixel I_xy = [R, G, B] of a training image add

    [p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T,   a_i ~ N(0, 0.1), drawn once per image per use,

where p_i and l_i are the eigenvectors and eigenvalues of the 3x3 RGB covariance. The offset
is the same for every pixel of an image, so the jitter shifts each image's colour along the
principal components, by amounts proportional to the natural variation in that direction.

    pca = rgb_pca(train_images_uint8)                       # once, on the host
    x = pca_color_jitter(rng, x, pca.eigvals, pca.eigvecs)  # per batch, inside jit

The eigenvalues carry the units of the pixels they came from: `rgb_pca` scales uint8 by 1/255
by default, so apply the jitter to images in [0, 1] (before normalising by mean/std), or pass
`scale=1.0` and apply it in [0, 255].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RGBPCA(NamedTuple):
  """Principal components of RGB pixel values."""
  eigvals: np.ndarray  # (3,) variances along the components, descending
  eigvecs: np.ndarray  # (3, 3): column i is p_i, unit norm (rgb_pca: largest |entry| > 0)
  mean: np.ndarray  # (3,) mean pixel, in the same units


# ImageNet (ILSVRC-2012 train, pixels in [0, 1]) as used by fb.resnet.torch's `Lighting`
# transform and many AlexNet re-implementations; columns are the eigenvectors.
IMAGENET_PCA = RGBPCA(
    eigvals=np.array([0.2175, 0.0188, 0.0045]),
    eigvecs=np.array([[-0.5675, 0.7192, 0.4009],
                      [-0.5808, -0.0045, -0.8140],
                      [-0.5836, -0.6948, 0.4203]]),
    mean=np.array([0.485, 0.456, 0.406]))


def rgb_pca(images: np.ndarray, scale: float = 1 / 255, chunk: int = 1024) -> RGBPCA:
  """PCA of the pixel values of uint8 images [N, H, W, 3] (every pixel of every image).

  Accumulates sums and cross products in float64, `chunk` images at a time, so a large
  training set needs no float copy. Eigenvalues are those of the population covariance of
  `images * scale`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'rgb_pca needs RGB images [N, H, W, 3], got shape {images.shape}.')
  total = np.zeros(3)
  cross = np.zeros((3, 3))
  count = 0
  for start in range(0, len(images), chunk):
    px = images[start:start + chunk].reshape(-1, 3).astype(np.float64)
    total += px.sum(axis=0)
    cross += px.T @ px
    count += len(px)
  if count == 0:
    raise ValueError('rgb_pca needs at least one image.')
  mean = total / count
  cov = (cross / count - np.outer(mean, mean)) * scale**2
  eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
  order = np.argsort(eigvals)[::-1]
  eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
  signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(3)])
  return RGBPCA(eigvals, eigvecs * signs, mean * scale)


def pca_offsets(alphas: jax.Array, eigvals, eigvecs) -> jax.Array:
  """The RGB offset P (alpha * lambda) for each row of `alphas` [N, 3] -> [N, 3]."""
  eigvals = jnp.asarray(eigvals, alphas.dtype)
  eigvecs = jnp.asarray(eigvecs, alphas.dtype)
  return (alphas * eigvals) @ eigvecs.T


def pca_color_jitter(rng: jax.Array, images: jax.Array, eigvals, eigvecs,
                     std: float = 0.1) -> jax.Array:
  """Adds P (alpha * lambda), alpha ~ N(0, std^2) per image and component, to every pixel.

  `images` is float [N, H, W, 3] in the units of the eigenvalues; the result is not clipped
  (the paper does not say it clips). `std=0` returns the images unchanged. Jittable; `std`
  may be a traced scalar.
  """
  alphas = std * jax.random.normal(rng, (images.shape[0], 3), images.dtype)
  offsets = pca_offsets(alphas, eigvals, eigvecs)
  return images + offsets[:, None, None, :]


__all__ = ['RGBPCA', 'IMAGENET_PCA', 'rgb_pca', 'pca_offsets', 'pca_color_jitter']
