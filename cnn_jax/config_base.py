"""The one schema every experiment config fills in.

An experiment config (configs/*.py) starts from `base_config()`, overrides what its experiment
needs and returns the locked dict. Every hyper-parameter lives here, with a one-line comment;
none is hard-coded in the library. `validate()` rejects keys the schema does not know and values
outside their allowed set with a `ConfigError` that names the nearest valid key or value, at any
nesting depth (`data.dataset`, `model_kwargs.shortcut`). `apply_overrides()` is the one parser
of 'KEY=VALUE' overrides (an experiment's `--set`, a sweep's members and `--config.KEY=VALUE`):
its mistakes are ConfigErrors too.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import numbers
from typing import Any, Iterable

import ml_collections

from cnn_jax import datasets, models, runtime
from cnn_jax.errors import ConfigError, check_choice, did_you_mean, nearest  # noqa: F401

SCHEDULES = ('constant', 'step', 'cosine', 'plateau')
OPTIMIZERS = ('sgd', 'adamw')
# 'bundled': files shipped in data/; 'tfds': tensorflow-datasets; 'folder': an image folder
# laid out as split/class/*.jpg (cnn_jax.datasets.image_folder).
DATA_SOURCES = datasets.DATA_SOURCES
PIPELINES = ('device', 'stream')  # config.data.pipeline (cnn_jax.streaming)
UNITS = ('epochs', 'steps')
METRICS = ('val_loss', 'val_accuracy')
DTYPES = ('float32', 'bfloat16', 'float16', 'auto')
TRAINABLE = ('all', 'last_stage', 'head')  # config.trainable (cnn_jax.transfer)
CPU_KERNEL_NAMES = runtime.CPU_KERNEL_NAMES  # cnn_jax.kernels.library.KERNELS
CPU_KERNELS = ('auto', 'on', 'off')  # config.cpu_kernels, or a comma list of CPU_KERNEL_NAMES


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = ''  # experiment name, used in reports and results.json

  # Model: any name of cnn_jax.models.names().
  c.model = 'lenet5'
  c.model_kwargs = ml_collections.ConfigDict()  # extra module fields, e.g. {'shortcut': 'B'}
  c.dtype = 'float32'  # computation dtype; parameters stay float32; 'auto': bfloat16 where native (cnn_jax.precision)
  # Transfer learning (cnn_jax.transfer): start from a trained run with a new head.
  c.init_from = ''  # workdir (best, else latest checkpoint) or torchvision .pth/.safetensors; '' = none
  c.trainable = 'all'  # 'all', 'last_stage' (+ head) or 'head' (linear probe); frozen BN: inference mode

  # Data.
  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'mnist'  # see cnn_jax.datasets.names(); 'image_folder' = your own folder
  c.data.source = 'bundled'  # 'bundled': files in data/; 'tfds'; 'folder': split/class/*.jpg
  c.data.data_dir = ''  # '' = the bundled folder, TFDS's default or the dataset's default folder
  c.data.tfds_download = False  # let TFDS download and prepare when data_dir has no copy
  c.data.validation_size = 1024  # images carved from train for validation (C15)
  c.data.split_seed = 0  # fixes which train images become validation, independent of `seed`
  c.data.train_subset = 0  # train on only this many of the remaining images (0 = all)
  c.data.select_classes = ()  # keep only these labels, relabelled 0..k-1 in this order; () = all
  c.data.per_class = 0  # this many training images per class (fixed by split_seed); 0 = all
  c.data.image_size = 0  # pad (centred, zeros) to this square size on device; 0 = keep
  c.data.normalize = True  # subtract the dataset's per-channel mean, divide by its std
  c.data.random_crop_padding = 0  # train-time augmentation: pad by this many pixels, crop back
  c.data.resize = 0  # image folders: scale each shorter side to this, keep the central square (AlexNet: 256); 0 = one size needed
  c.data.crop_size = 0  # random crop of this side for training, the central one for evaluation (AlexNet: 227 of 256); 0 = off
  c.data.pca_jitter_std = 0.0  # AlexNet's PCA colour jitter, alpha ~ N(0, std^2) per component, from the train split's RGB PCA (paper: 0.1); 0 = off
  c.data.horizontal_flip = False  # train-time augmentation: random left-right flip
  c.data.train_eval_size = 0  # fixed train images evaluated without augmentation at each validation (training error); 0 = off
  c.data.pipeline = 'device'  # 'device': the dataset lives on the accelerator; 'stream': batches decoded on the host (ImageNet scale, cnn_jax.streaming)
  c.data.stream_workers = 0  # stream: decoding threads (0 = one per core)
  c.data.stream_prefetch = 2  # stream: batches decoded ahead of the step
  c.data.stats_images = 2000  # stream: training images the per-channel mean/std and colour PCA come from
  # Segmentation data (cnn_jax.datasets: mnist_segmentation generated offline, oxford_iiit_pet).
  c.data.segmentation = ml_collections.ConfigDict()
  c.data.segmentation.size = 64  # mnist_segmentation: canvas side; oxford_iiit_pet: resized side
  c.data.segmentation.num_train = 60_000  # mnist_segmentation: canvases made from MNIST train
  c.data.segmentation.num_test = 10_000  # mnist_segmentation: canvases made from MNIST test
  c.data.segmentation.max_digits = 3  # mnist_segmentation: 1..max_digits digits per canvas
  c.data.segmentation.seed = 0  # mnist_segmentation: the canvases are a pure function of it

  # Optimisation.
  c.batch_size = 64  # global batch, split over all devices of all hosts
  c.eval_batch_size = 1000  # global batch for evaluation
  c.num_epochs = 20  # training length in epochs (ignored when num_steps > 0)
  c.num_steps = 0  # training length in steps; 0 = num_epochs * steps_per_epoch
  c.optimizer = 'sgd'  # 'sgd' (momentum/Nesterov optional) or 'adamw'
  c.learning_rate = 0.1  # peak learning rate
  c.momentum = 0.0  # SGD momentum; 0 = plain SGD
  c.nesterov = False  # Nesterov momentum (needs momentum > 0)
  c.weight_decay = 0.0  # weight-decay coefficient
  c.decoupled_weight_decay = False  # False: L2 term added to the gradient; True: decoupled (SGDW)
  c.weight_decay_kernels_only = False  # decay only conv/dense kernels, not biases or norm scales
  c.grad_clip_norm = 0.0  # clip the global gradient norm; 0 = off
  c.label_smoothing = 0.0  # cross-entropy label smoothing
  c.aux_loss_weight = 0.3  # weight of auxiliary-classifier losses (GoogLeNet with aux_logits=True)

  # Learning-rate schedule.
  c.lr_schedule = 'constant'  # 'constant', 'step', 'cosine' or 'plateau'
  c.schedule_unit = 'epochs'  # unit of warmup and lr_boundaries: 'epochs' or 'steps'
  c.warmup = 0.0  # linear warmup length from 0 to learning_rate
  c.lr_boundaries = ()  # 'step': multiply the rate by lr_decay_factor at each boundary
  c.lr_decay_factor = 0.1  # 'step' and 'plateau': multiplicative decay
  c.lr_min_ratio = 0.0  # 'cosine': final rate as a fraction of the peak
  c.plateau_patience = 5  # 'plateau': validation rounds without improvement before decaying
  c.plateau_cooldown = 0  # 'plateau': rounds to wait after a decay
  c.plateau_min_scale = 1e-3  # 'plateau': the rate never falls below learning_rate * this
  c.plateau_rtol = 1e-4  # 'plateau': relative improvement that counts as better

  # Evaluation, early stopping, checkpoints, logging.
  c.eval_every_epochs = 1  # validate every N epochs (and after the last); 1 = every epoch
  c.eval_every_steps = 0  # validate every N steps instead (curves over iterations); 0 = use eval_every_epochs
  c.gradient_diagnostics = False  # log per-block signal and gradient norms at init and each validation (C20)
  c.eval_test_curve = False  # also evaluate the test split at each validation, for curves; selection never sees it
  c.ten_crop_test = False  # also test with AlexNet's 10 views (4 corners + centre of data.crop_size, and mirrors), softmax averaged
  c.selection_metric = 'val_loss'  # validation objective for the best checkpoint, early stopping, plateau
  c.selection_ties_to_latest = True  # on a tie (common for accuracy on a small split), keep the later checkpoint
  c.early_stopping_patience = 0  # stop after this many validations without improvement; 0 = off
  c.checkpoint_every_steps = 0  # also save the latest state every N steps; 0 = at epoch ends only
  c.log_every_steps = 100  # train metrics to the progress bar, JSON lines and TensorBoard
  c.progress_bar = True  # tqdm bar with loss, accuracy, images/s and ETA
  c.seed = 0  # parameter init, data order and dropout
  # The layer set on a CPU (cnn_jax.kernels.layer_set): 'auto' = the CPU kernels that build here,
  # 'on' = all of them or an error, 'off' = JAX's own ops (as on every other platform), or a
  # comma list of kernels ('conv2d', 'batch_norm'). Default: CNN_JAX_CPU_KERNELS, else 'auto'.
  c.cpu_kernels = runtime.cpu_kernels_default()

  # Distributed.
  c.distributed = False  # call jax.distributed.initialize() (multi-host); env vars give the cluster
  c.stop_check_every_steps = 10  # multi-process: hosts agree on a stop request (SIGTERM, Ctrl-C) every N steps; 1 process: every step
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on keys the schema lacks or values it does not allow, naming the nearest."""
  _check_keys(config, base_config(), prefix='')
  choices = {
      'optimizer': OPTIMIZERS, 'lr_schedule': SCHEDULES, 'schedule_unit': UNITS,
      'selection_metric': METRICS, 'dtype': DTYPES, 'data.source': DATA_SOURCES,
      'data.pipeline': PIPELINES,
      'trainable': TRAINABLE,
  }
  for key, allowed in choices.items():
    check_choice(key, _get(config, key), allowed)
  positive = ('batch_size', 'eval_batch_size', 'learning_rate', 'log_every_steps',
              'eval_every_epochs', 'stop_check_every_steps', 'data.stream_prefetch',
              'data.stats_images')
  for key in positive:
    if not _get(config, key) > 0:
      raise ConfigError(f'config.{key} must be > 0, got {_get(config, key)!r}.')
  non_negative = ('num_steps', 'num_epochs', 'eval_every_steps', 'checkpoint_every_steps',
                  'early_stopping_patience', 'weight_decay', 'momentum', 'grad_clip_norm',
                  'data.validation_size', 'data.train_subset', 'data.per_class', 'data.image_size',
                  'data.train_eval_size', 'data.random_crop_padding', 'data.resize',
                  'data.crop_size', 'data.pca_jitter_std', 'data.stream_workers')
  for key in non_negative:
    if _get(config, key) < 0:
      raise ConfigError(f'config.{key} must be >= 0, got {_get(config, key)!r}.')
  if config.nesterov and config.momentum <= 0:
    raise ConfigError('config.nesterov=True needs config.momentum > 0.')
  if config.num_epochs <= 0 and config.num_steps <= 0:
    raise ConfigError('Set config.num_epochs or config.num_steps to a positive value.')
  _check_classes(config.data.select_classes)
  if config.ten_crop_test and not config.data.crop_size:
    raise ConfigError('config.ten_crop_test=True takes its 10 views of config.data.crop_size; set '
                      'data.crop_size (AlexNet: 227 of 256) or ten_crop_test=False.')
  if config.lr_schedule == 'step' and not config.lr_boundaries:
    raise ConfigError("config.lr_schedule='step' needs config.lr_boundaries, e.g. (30, 60).")
  _check_model(config.model, config.model_kwargs)
  _check_dataset(config.data.dataset)
  check_cpu_kernels(config.cpu_kernels)


def check_cpu_kernels(value: str) -> tuple[str, ...]:
  """config.cpu_kernels checked: ('auto',), ('on',), ('off',) or the kernel names it lists."""
  if value in CPU_KERNELS:
    return (value,)
  names, unknown = runtime.kernel_names(value)
  if unknown or not names:
    raise ConfigError(f'config.cpu_kernels={value!r} is not valid.{did_you_mean(value, CPU_KERNELS)}'
                      f' Valid values: {", ".join(map(repr, CPU_KERNELS))} or a comma list of '
                      f'{", ".join(CPU_KERNEL_NAMES)}.')
  return names


def unknown_key_message(key: str, valid: list[str]) -> str:
  """'Unknown config key' naming the nearest valid keys, at the depth where `key` went wrong.

  `key` is dotted ('data.name'); `valid` the valid dotted leaf keys. The message lists the valid
  keys of the deepest known parent ('data'), and the nearest keys across the whole schema.
  """
  parts = key.split('.')
  nodes = {'.'.join(v.split('.')[:i]) for v in valid for i in range(1, v.count('.') + 1)}
  depth = 0  # number of leading parts that name known nodes
  while depth < len(parts) - 1 and '.'.join(parts[:depth + 1]) in nodes:
    depth += 1
  parent = '.'.join(parts[:depth])
  prefix = parent + '.' if parent else ''
  siblings = sorted({prefix + v[len(prefix):].split('.')[0] for v in valid
                     if v.startswith(prefix)})
  wrong = parts[depth]
  # Score every valid key by its whole path and by its last part, so 'data.name' finds both
  # 'data.dataset' (its siblings) and 'name' (the same word at the top level).
  leaf = lambda k: k.split('.')[-1]
  score = lambda k: max(difflib.SequenceMatcher(None, key, k).ratio(),
                        difflib.SequenceMatcher(None, wrong, leaf(k)).ratio(),
                        difflib.SequenceMatcher(None, parts[-1], leaf(k)).ratio())
  pool = sorted(set(valid) | set(siblings), key=score, reverse=True)
  best = [k for k in pool if score(k) >= 0.6][:3] or pool[:1]
  where = f'config.{parent}' if parent else 'the config (top level)'
  return (f'Unknown config key {key!r}. Did you mean {" or ".join(map(repr, best))}? '
          f'Valid keys of {where}: {", ".join(s[len(prefix):] for s in siblings)}.')


# ------------------------------------------------------------------ KEY=VALUE overrides


def literal(text: str):
  """An override's value as Python reads it: 'True' -> True, '3' -> 3, '(1, 2)' -> (1, 2);
  anything else ('B', '/data/cifar10') is the string itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_key(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """config[dotted key] = value, for a leaf key of the schema or `model_kwargs.FIELD` (the field
  is checked against the model by `validate`). ConfigError for an unknown key, naming the nearest
  valid ones, or for a value of the wrong type, naming the type the key expects."""
  if key.startswith('model_kwargs.') and key.count('.') == 1:
    with config.unlocked():
      config.model_kwargs[key.split('.', 1)[1]] = value
    return
  schema = base_config()
  valid = all_keys(schema)
  if key not in valid:
    raise ConfigError(unknown_key_message(key, valid))
  *parents, leaf = key.split('.')
  target = config
  for part in parents:
    target = target[part]
  try:
    target[leaf] = value
  except TypeError as e:
    default = _get(schema, key)
    raise ConfigError(f'config.{key}={value!r}: {e} (config.{key} expects '
                      f'{type(default).__name__} values, e.g. {default!r}).') from e


def apply_overrides(config: ml_collections.ConfigDict,
                    items: Iterable[str]) -> ml_collections.ConfigDict:
  """Sets each 'KEY=VALUE' of `items` in `config`, in order, and returns it: KEY dotted
  ('data.data_dir', 'model_kwargs.shortcut'), VALUE read by `literal`. ConfigError for an item
  without '=' or a key, an unknown key (naming the nearest valid keys) or a value of the wrong type.
  Nothing else is validated: `validate` checks the whole config afterwards."""
  for item in items:
    key, sep, value = str(item).partition('=')
    if not sep or not key.strip():
      raise ConfigError(f'A config override is KEY=VALUE, e.g. data.data_dir=/data/cifar10; got '
                        f'{item!r}.')
    set_key(config, key.strip(), literal(value))
  return config


def check_key(key: str) -> None:
  """ConfigError unless the dotted `key` names a leaf, a section or a model_kwargs field path."""
  valid = all_keys(base_config())
  if key in valid or key.startswith('model_kwargs.'):
    return
  if any(v.startswith(key + '.') for v in valid):
    return
  raise ConfigError(unknown_key_message(key, valid))


def _check_keys(config, schema, prefix):
  for key in config.keys():
    path = prefix + key
    if key not in schema:
      raise ConfigError(unknown_key_message(path, all_keys(base_config())))
    if isinstance(schema[key], ml_collections.ConfigDict) and key != 'model_kwargs':
      _check_keys(config[key], schema[key], prefix=path + '.')


def _check_model(name: str, model_kwargs) -> None:
  """The model exists and has every field that model_kwargs sets (nothing is built)."""
  if name not in models.names():
    raise ConfigError(f'Unknown model {name!r} (config.model).{did_you_mean(name, models.names())}'
                      f' Known models: {", ".join(models.names())}.')
  ctor = models.spec(name).ctor
  cls = getattr(ctor, 'func', ctor)  # functools.partial aliases: the class's fields
  if not dataclasses.is_dataclass(cls):
    return
  fields = sorted(f.name for f in dataclasses.fields(cls)
                  if f.name not in ('parent', 'name', 'num_classes'))
  for key in model_kwargs.keys():
    if key not in fields:
      raise ConfigError(f'Model {name!r} has no field {key!r} (config.model_kwargs.{key}).'
                        f'{did_you_mean(key, fields)} Its fields: {", ".join(fields)}.')


def _check_classes(classes) -> None:
  """data.select_classes: distinct integer labels >= 0 (the dataset checks the upper bound)."""
  classes = tuple(classes)
  bad = [c for c in classes if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 0]
  if bad:
    raise ConfigError(f'config.data.select_classes={classes!r}: labels must be integers >= 0, got '
                      f'{bad[0]!r}. Example: (5, 6, 7, 8, 9).')
  repeated = sorted({c for c in classes if classes.count(c) > 1})
  if repeated:
    raise ConfigError(f'config.data.select_classes={classes!r} repeats {repeated}; list each label '
                      f'once, e.g. {tuple(dict.fromkeys(classes))!r}.')


def _check_dataset(name: str) -> None:
  if name not in datasets.names():
    raise ConfigError(f'Unknown dataset {name!r} (config.data.dataset).'
                      f'{did_you_mean(name, datasets.names())} Known: {", ".join(datasets.names())}.')


def all_keys(config, prefix='') -> list[str]:
  """Every leaf key of a config, dotted ('data.image_size'); model_kwargs counts as one."""
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and key != 'model_kwargs':
      keys.extend(all_keys(value, prefix + key + '.'))
    else:
      keys.append(prefix + key)
  return keys


def _get(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config
