"""What a model predicts, and so its loss and metrics: one image label, or one label per pixel.

The registry entry of a model names its task (`cnn_jax.models.spec(name).task`); the jitted
steps of cnn_jax.train ask the task, never the model's name, how to:

* `inputs`: turn a raw uint8 batch and its labels into the model's input (normalisation,
  padding, and at training time augmentation applied to image and labels together);
* `losses` and `correct`: per-example loss and fraction of correct predictions, from which the
  training step keeps its running totals (so the train log's `accuracy` is the accuracy for a
  classifier and the pixel accuracy for a segmenter);
* `zero_totals`, `accumulate`, `metrics`: evaluation totals summed on the device over a split's
  batches, and the final figures. Classification: `loss`, `accuracy`. Segmentation: `loss` (mean
  per-pixel cross-entropy), `accuracy` (pixel accuracy) and `mean_iou`, both from one confusion
  matrix accumulated on the device; every class counts, none is ignored.

Segmentation with valid convolutions (the U-Net paper's net) outputs a map smaller than its input;
the label mask is then centre-cropped to the output, the paper's output crop (`align`). When the
input was padded (`--config.data.image_size`, the paper's overlap-tile strategy) the output can be
larger than the mask; the logits are then centre-cropped to the mask instead.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from cnn_jax import input_pipeline, models

CLASSIFICATION = 'classification'
SEGMENTATION = 'segmentation'
KINDS = (CLASSIFICATION, SEGMENTATION)


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  """Softmax cross-entropy per label (any leading shape), with optional label smoothing."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per image: logits [N, K], labels int [N]."""
  num_classes: int
  kind = CLASSIFICATION
  output_rank = 2  # logits [N, K]

  def check_labels(self, label_shape) -> str | None:
    """None when per-example labels of this shape fit the task, else what is wrong."""
    if tuple(label_shape):
      return (f'the dataset gives one label map of shape {tuple(label_shape)} per image (a '
              'segmentation dataset) but the model outputs one class per image')
    return None

  def inputs(self, preprocess, images, labels, rng=None, train=False):
    return preprocess(images, rng, train=train), labels

  def losses(self, logits, labels, label_smoothing=0.0):
    return cross_entropy(logits, labels, self.num_classes, label_smoothing)

  def correct(self, logits, labels):
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)

  def zero_totals(self) -> dict:
    zero = jnp.zeros((), jnp.float32)
    return {'loss': zero, 'correct': zero, 'count': zero}

  def accumulate(self, totals, logits, labels, weights) -> dict:
    """Adds a batch; `weights` (bool or 0/1, [N]) marks real examples of a padded split."""
    w = weights.astype(jnp.float32)
    return {'loss': totals['loss'] + jnp.sum(self.losses(logits, labels) * w),
            'correct': totals['correct'] + jnp.sum(self.correct(logits, labels) * w),
            'count': totals['count'] + jnp.sum(w)}

  def metrics(self, totals) -> dict:
    return {'loss': totals['loss'] / totals['count'],
            'accuracy': totals['correct'] / totals['count']}


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """One label per pixel: logits [N, h, w, K], label masks int [N, H, W].

  Training-time augmentation moves the mask with the image: the random crop pads image and mask
  with zeros (black, and class 0, the background) and crops both at the same offset; the flip
  flips both. Both are done on the raw uint8 batch, before normalisation and padding.
  """
  num_classes: int
  kind = SEGMENTATION
  output_rank = 4  # logits [N, h, w, K]

  def check_labels(self, label_shape) -> str | None:
    if len(tuple(label_shape)) != 2:
      return (f'the model outputs per-pixel logits for segmentation but the dataset gives labels '
              f'of shape {tuple(label_shape)} per image, not an (H, W) mask (a segmentation '
              "dataset such as 'mnist_segmentation' or 'oxford_iiit_pet')")
    return None

  def inputs(self, preprocess, images, labels, rng=None, train=False):
    if train and rng is not None:
      images, labels = augment(preprocess, images, labels, rng)
    return preprocess(images, None, train=False), labels

  def losses(self, logits, labels, label_smoothing=0.0):
    """Per image: the mean over its pixels of the per-pixel cross-entropy."""
    logits, labels = align(logits, labels)
    return cross_entropy(logits, labels, self.num_classes, label_smoothing).mean(axis=(1, 2))

  def correct(self, logits, labels):
    """Per image: the fraction of its pixels classified correctly."""
    logits, labels = align(logits, labels)
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32).mean(axis=(1, 2))

  def zero_totals(self) -> dict:
    return {'loss': jnp.zeros((), jnp.float32), 'count': jnp.zeros((), jnp.float32),
            'confusion': jnp.zeros((self.num_classes, self.num_classes), jnp.int32)}

  def accumulate(self, totals, logits, labels, weights) -> dict:
    w = weights.astype(jnp.float32)
    cropped_logits, cropped_labels = align(logits, labels)
    return {'loss': totals['loss'] + jnp.sum(self.losses(logits, labels) * w),
            'count': totals['count'] + jnp.sum(w),
            'confusion': totals['confusion'] + confusion_matrix(
                cropped_labels, jnp.argmax(cropped_logits, -1), self.num_classes, weights)}

  def metrics(self, totals) -> dict:
    return {'loss': totals['loss'] / totals['count'],
            'accuracy': pixel_accuracy(totals['confusion']),
            'mean_iou': mean_iou(totals['confusion'])}


def create(kind: str, num_classes: int):
  """The task object of a model's registry entry (`models.spec(name).task`)."""
  if kind == CLASSIFICATION:
    return Classification(num_classes)
  if kind == SEGMENTATION:
    return Segmentation(num_classes)
  raise ValueError(f'Unknown task {kind!r}; one of {KINDS}.')


def for_model(name: str, num_classes: int):
  return create(models.spec(name).task, num_classes)


# ------------------------------------------------------------------------ segmentation pieces


def center_crop(x, height: int, width: int):
  """The spatial centre (height, width) of [N, H, W, ...] (the U-Net paper's crop)."""
  top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width]


def align(logits, labels):
  """Centre-crops logits [N, h, w, K] and masks [N, H, W] to their common spatial size.

  A valid-padding net's output is the centre of its input: the mask is cropped to it (the
  paper's output crop). An output larger than the mask (the input was padded) is cropped to the
  mask. Sizes are static, so this is plain slicing at trace time.
  """
  height = min(logits.shape[1], labels.shape[1])
  width = min(logits.shape[2], labels.shape[2])
  return center_crop(logits, height, width), center_crop(labels, height, width)


def confusion_matrix(labels, predictions, num_classes: int, weights=None):
  """int32 [K, K]: entry [t, p] counts the pixels of true class t predicted as p.

  `weights` ([N], bool or 0/1) leaves out the padding examples of an evaluation split.
  """
  index = labels.astype(jnp.int32) * num_classes + predictions.astype(jnp.int32)
  counts = jnp.ones(index.shape, jnp.int32)
  if weights is not None:
    counts = counts * weights.astype(jnp.int32).reshape((-1,) + (1,) * (index.ndim - 1))
  flat = jnp.zeros((num_classes * num_classes,), jnp.int32).at[index.reshape(-1)].add(
      counts.reshape(-1))
  return flat.reshape(num_classes, num_classes)


def pixel_accuracy(confusion):
  """Correct pixels over all pixels."""
  confusion = confusion.astype(jnp.float32)
  return jnp.trace(confusion) / jnp.sum(confusion)


def iou_per_class(confusion):
  """TP / (TP + FP + FN) per class; NaN for a class absent from both truth and prediction."""
  confusion = confusion.astype(jnp.float32)
  tp = jnp.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  return jnp.where(union > 0, tp / jnp.where(union > 0, union, 1.0), jnp.nan)


def mean_iou(confusion):
  """The mean IoU over the classes present in the truth or the prediction (the usual mIoU)."""
  return jnp.nanmean(iou_per_class(confusion))


def augment(preprocess, images, masks, rng):
  """Random crop and flip of uint8 images [N, H, W, C] and masks [N, H, W] together, as
  `preprocess` asks (random_crop_padding, horizontal_flip)."""
  crop_rng, flip_rng = jax.random.split(rng)
  if preprocess.random_crop_padding:
    stacked = jnp.concatenate([images, masks[..., None].astype(images.dtype)], axis=-1)
    stacked = input_pipeline.random_crop(crop_rng, stacked, preprocess.random_crop_padding)
    images, masks = stacked[..., :-1], stacked[..., -1].astype(masks.dtype)
  if preprocess.horizontal_flip:
    flip = jax.random.bernoulli(flip_rng, 0.5, (images.shape[0], 1, 1))
    images = jnp.where(flip[..., None], images[:, :, ::-1], images)
    masks = jnp.where(flip, masks[:, :, ::-1], masks)
  return images, masks
