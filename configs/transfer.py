"""Transfer learning on CIFAR-10 (claim C24): pretrain on classes 0-4, transfer to classes 5-9.

    python -m experiments.transfer --preset=quick       # all of it, and the report
    python -m cnn_jax.main --config=configs/transfer.py:pretrain,quick --workdir=workdirs/src
    python -m cnn_jax.main --config=configs/transfer.py:transfer,quick --workdir=workdirs/probe \\
        --config.init_from=workdirs/src --config.trainable=head --config.data.per_class=100

`get_config('<stage>[,<preset>]')`, stage 'pretrain' or 'transfer':

* pretrain: the source task, CIFAR-10 airplane, automobile, bird, cat, deer (labels 0-4), 1,000
  of their training images held out for validation (best checkpoint by validation accuracy).
* transfer: the new task, dog, frog, horse, ship, truck (labels 5-9, relabelled 0-4), trained on
  `data.per_class` images per class (0 = all 5,000; the smaller sets are nested, fixed by
  `data.split_seed`), tested on their 5,000 test images. No validation split (a 500-image
  validation set would outnumber the 250 training images of the smallest set): a fixed cosine
  schedule, and the last state is tested. The length grows with the data (`transfer_steps`).

Methods (`METHODS`; experiments/transfer.py sets them): 'scratch' trains a fresh network;
'head' is a linear probe (init_from the pretrained run, trainable='head'); 'last_stage' also
trains the last stage; 'all' fine-tunes everything. New parameters only (scratch, probe) use the
recipe's rate; when pretrained weights train, the rate is divided by 10, the usual fine-tuning
choice. Every run: SGD momentum 0.9, weight decay 5e-4 (L2), cosine decay, 4-pixel crop + flip.

Presets: none = ResNet-20 (pretrain 6,000 steps of 128, then 30 epochs within 300-3,000 steps
per transfer run; hours on a 2-core CPU, not run here); `quick` = ResNet-8, pretrain 1,000 steps
of 64, then 8 epochs within 60-150 steps per transfer run: the protocol of reports/transfer
(minutes per run; at 'all' the 150 steps see 9,600 of the 25,000 images, a budget, not
convergence); `toy` = a few steps, seconds, for tests. Expected (the lecture's statement): from
scratch is worst with little data; the probe is close to fine-tuning at 50 images per class and
falls behind as the data grow. The report checks it and says so when it does not hold.
"""
from cnn_jax import config_base

STAGES = ('pretrain', 'transfer')
PRESETS = ('quick', 'toy')
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
PER_CLASS = (50, 100, 500, 0)  # images per class of the new task; 0 = all (5,000)

# method -> (config.trainable, starts from the pretrained run, learning-rate multiplier)
METHODS = {
    'scratch': ('all', False, 1.0),
    'head': ('head', True, 1.0),
    'last_stage': ('last_stage', True, 0.1),
    'all': ('all', True, 0.1),
}

# preset -> model, batch, pretraining steps, transfer epochs and min/max steps.
PROTOCOL = {
    '': dict(model='resnet20', batch=128, pretrain_steps=6_000, epochs=30, min_steps=300,
             max_steps=3_000),
    'quick': dict(model='resnet8', batch=64, pretrain_steps=1_000, epochs=8, min_steps=60,
                  max_steps=150),
    'toy': dict(model='resnet8', batch=16, pretrain_steps=8, epochs=1, min_steps=4, max_steps=4),
}


def transfer_steps(per_class: int, preset: str = '', num_train: int = 25_000) -> int:
  """Training steps on the new task: `epochs` passes over its images, within [min, max]."""
  p = PROTOCOL[preset]
  images = 5 * per_class if per_class else num_train
  return min(p['max_steps'], max(p['min_steps'], p['epochs'] * images // p['batch']))


def get_config(arg: str | None = None):
  stage, _, preset = (arg or 'transfer').partition(',')
  if stage not in STAGES:
    raise ValueError(f'Unknown stage {stage!r} for configs/transfer.py; use one of {STAGES}, '
                     f'optionally followed by ",<preset>" with a preset in {PRESETS}.')
  if preset and preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; use one of {PRESETS} (or none).')
  p = PROTOCOL[preset]
  c = config_base.base_config()
  c.name = f'transfer_{stage}' + (f'_{preset}' if preset else '')
  c.model = p['model']
  c.data.dataset = 'cifar10'
  c.data.source = 'folder'  # the offline JPEG copy; 'tfds' for TFDS cifar10
  c.data.random_crop_padding = 4
  c.data.horizontal_flip = True

  c.batch_size = p['batch']
  c.eval_batch_size = 1_000
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'cosine'
  c.schedule_unit = 'steps'
  c.log_every_steps = 50
  c.progress_bar = False

  if stage == 'pretrain':
    c.data.select_classes = SOURCE_CLASSES
    c.data.validation_size = 1_000
    c.selection_metric = 'val_accuracy'
    c.num_steps = p['pretrain_steps']
    c.eval_every_steps = max(p['pretrain_steps'] // 6, 1)
    c.checkpoint_every_steps = 250
  else:
    c.data.select_classes = TARGET_CLASSES
    c.data.validation_size = 0  # the last state is tested (see the docstring)
    c.data.per_class = 100
    c.num_steps = transfer_steps(c.data.per_class, preset)
  if preset == 'toy':
    c.eval_batch_size = 64
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 0
    if stage == 'pretrain':
      c.data.validation_size = 40
      c.data.per_class = 16
    else:
      c.data.per_class = 8
  return c


def member_config(preset: str, method: str, per_class: int, seed: int, pretrained: str):
  """The transfer config of one run of experiments/transfer.py."""
  trainable, from_pretrained, lr_scale = METHODS[method]
  c = get_config('transfer' + (f',{preset}' if preset else ''))
  c.name = f'transfer_{method}_n{per_class or "all"}_seed{seed}'
  c.data.per_class = per_class
  c.trainable = trainable
  c.init_from = pretrained if from_pretrained else ''
  c.learning_rate *= lr_scale
  c.seed = seed
  c.num_steps = transfer_steps(per_class, preset)
  return c
