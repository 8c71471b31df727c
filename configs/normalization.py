"""Claim C11: one small CIFAR-10 CNN without normalisation and with BatchNorm, LayerNorm,
InstanceNorm and GroupNorm (the lecture, notes 000/001: BN per channel over the batch and the
pixels, with running averages at inference; LN over a whole example; IN one image, one channel).

`get_config('<norm>[,<preset>]')`: norm one of none, batch, layer, instance, group, or `all`
(the default) for the sweep over the five (its base config is `none`); preset empty (CPU-sized:
1,500 steps of batch 128, about 4 epochs), `quick` (150 steps of batch 64, a fifth of an epoch:
minutes per run on a busy 2-core machine) or `toy` (seconds, tests).

    python -m experiments.normalization --seeds=2          # the sweep, BN test, axes check, report
    python -m experiments.normalization --preset=quick --seeds=2 --test_images=1000 \\
        --report_dir=reports/normalization                 # the committed report
    python -m cnn_jax.main --config=configs/normalization.py:batch --workdir=workdirs/norm_batch
    python -m cnn_jax.sweep --config=configs/normalization.py --seeds=2 --workdir=workdirs/normalization

Model 'cifar_cnn' (140,714 parameters without a norm, 141,034 with one), the same recipe for
every norm: SGD momentum 0.9, lr 0.05 with cosine decay, weight decay 5e-4 on the kernels,
random horizontal flips. Expected from the lecture: BatchNorm trains faster than no norm at the
same step size, and at test time its running averages make the output independent of the test
batch, where the statistics of single test images do not fit what the net learned. Measured
(quick preset): reports/normalization/report.md.
"""
from cnn_jax import config_base
from cnn_jax.models import layers

NORMS = layers.NORMS  # none, batch, layer, instance, group
PRESETS = ('quick', 'toy')


def parse(arg: str | None) -> tuple[str, str]:
  """'batch,toy' -> ('batch', 'toy'); either part may be left out (norm 'all', preset '')."""
  norm, preset = 'all', ''
  for token in filter(None, (arg or '').split(',')):
    if token in NORMS or token == 'all':
      norm = token
    elif token in PRESETS:
      preset = token
    else:
      raise config_base.ConfigError(
          f'configs/normalization.py: unknown argument {token!r}.'
          f'{config_base.did_you_mean(token, (*NORMS, "all", *PRESETS))} Use <norm>[,<preset>] '
          f'with a norm in {NORMS} or "all" and a preset in {PRESETS} or none.')
  return norm, preset


def get_config(arg: str | None = None):
  norm, preset = parse(arg)
  c = config_base.base_config()
  c.name = 'normalization' + ('' if norm == 'all' else f'_{norm}') + (f'_{preset}' if preset else '')
  c.model = 'cifar_cnn'
  c.model_kwargs.norm = 'none' if norm == 'all' else norm
  c.data.dataset = 'cifar10'
  c.data.source = 'folder'  # the offline JPEG copy beside the repository
  c.data.validation_size = 1_000
  c.data.horizontal_flip = True

  c.batch_size = 128
  c.eval_batch_size = 1_000
  c.optimizer = 'sgd'
  c.learning_rate = 0.05  # the same for every norm
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.weight_decay_kernels_only = True
  c.lr_schedule = 'cosine'
  c.schedule_unit = 'steps'
  c.num_steps = 1_500
  c.eval_every_steps = 150  # validation curve: 10 points
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.selection_metric = 'val_accuracy'
  c.progress_bar = False
  if preset == 'quick':
    c.batch_size = 64
    c.num_steps = 150
    c.eval_every_steps = 50
    c.log_every_steps = 10
    c.checkpoint_every_steps = 50
  elif preset == 'toy':
    c.data.validation_size = 200
    c.data.train_subset = 512
    c.batch_size = 32
    c.eval_batch_size = 200
    c.num_steps = 16
    c.eval_every_steps = 8
    c.log_every_steps = 4
    c.checkpoint_every_steps = 0
  return c


def get_sweep(arg: str | None = None):
  norm, _ = parse(arg)
  return [{'model_kwargs.norm': n} for n in (NORMS if norm == 'all' else (norm,))]
