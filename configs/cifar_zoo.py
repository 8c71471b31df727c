"""The classic architectures side by side on CIFAR-10 (claims C16-C19, issue 10 line 1).

    python -m cnn_jax.main --config=configs/cifar_zoo.py:vgg16_bn,cpu --workdir=workdirs/vgg16
    python -m experiments.cifar_zoo --preset=cpu --report_dir=reports/cifar_zoo   # all of them

`get_config('<model>[,<preset>]')`, model one of `MODELS` (short name -> registry name): VGG-11
and VGG-16 with BatchNorm, GoogLeNet (auxiliary heads on, their losses weighted
`aux_loss_weight` = 0.3 in training only, as the paper), DenseNet-BC-100-12, ResNet-18 with the
CIFAR stem, and CIFAR-size AlexNet and ZFNet; cnn_jax/models/cifar_zoo.py says how each was
adapted to 32x32 inputs.

* no preset: one common recipe for all (kuangliu/pytorch-cifar style): SGD momentum 0.9, lr 0.1
  with cosine decay over 200 epochs, batch 128, weight decay 5e-4 (L2), 4-pixel crop + flip,
  45k/5k train/validation split, best checkpoint by validation accuracy. Not run here.
* `cpu`: the reduced protocol of reports/cifar_zoo, identical for every model: 400 steps of
  batch 64 (25.6k images, about half an epoch of the 48k training images), lr 0.01 cosine
  (the papers' rate for AlexNet and VGG; at 0.05 VGG-11 and -16 diverged within 25 steps and
  stayed at chance, 14% and 11% validation accuracy, while 0.01 gave VGG-11 57%; AlexNet,
  without BatchNorm, reached 30% at 0.05 and learns more slowly at 0.01), 2k
  validation images checked at steps 200 and 400. About 1.5 hours for all seven on 2 AVX-512
  cores (GoogLeNet 40 min, DenseNet-BC 25 min, the rest 3-9 min each); it shows how far each
  architecture gets on a small budget, not its converged error.
* `toy`: a few steps on a few hundred images, seconds, for tests.

The papers' CIFAR-10 errors are quoted beside the results by experiments/cifar_zoo.py with the
protocol difference.
"""
from cnn_jax import config_base

# short name -> registry name (cnn_jax.models).
MODELS = {
    'vgg11_bn': 'vgg11_bn_cifar',
    'vgg16_bn': 'vgg16_bn_cifar',
    'googlenet': 'googlenet_cifar',
    'densenet_bc_100_12': 'densenet_bc_100_12',
    'resnet18': 'resnet18_cifar',
    'alexnet': 'alexnet_cifar',
    'zfnet': 'zfnet_cifar',
}
PRESETS = ('cpu', 'toy')


def get_config(arg: str | None = None):
  model, _, preset = (arg or 'resnet18').partition(',')
  if model not in MODELS:
    raise ValueError(f'Unknown model {model!r} for cifar_zoo; use one of {", ".join(MODELS)}, '
                     f'optionally followed by ",<preset>" with a preset in {PRESETS}.')
  if preset and preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; use one of {PRESETS} (or none for the recipe).')
  c = config_base.base_config()
  c.name = f'{model}_cifar10' + (f'_{preset}' if preset else '')
  c.model = MODELS[model]
  if model == 'googlenet':
    c.model_kwargs.aux_logits = True  # two auxiliary classifiers, training only
  c.aux_loss_weight = 0.3  # Szegedy et al. 2015: auxiliary losses weighted by 0.3
  c.data.dataset = 'cifar10'
  c.data.source = 'folder'  # the offline JPEG copy; 'tfds' for TFDS cifar10
  c.data.validation_size = 5_000
  c.data.random_crop_padding = 4
  c.data.horizontal_flip = True

  c.batch_size = 128
  c.eval_batch_size = 500
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = 'cosine'
  c.num_epochs = 200
  c.selection_metric = 'val_accuracy'
  c.checkpoint_every_steps = 500
  c.log_every_steps = 100
  if preset == 'cpu':
    c.batch_size = 64
    c.learning_rate = 0.01  # AlexNet's and VGG's own; at 0.05 the VGGs diverge in the first steps
    c.num_steps = 400
    c.schedule_unit = 'steps'
    c.data.validation_size = 2_000
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 100
    c.log_every_steps = 25
    c.progress_bar = False
  elif preset == 'toy':
    c.batch_size = 16
    c.eval_batch_size = 40
    c.num_steps = 4
    c.schedule_unit = 'steps'
    c.eval_every_steps = 4
    c.log_every_steps = 2
    c.data.validation_size = 40
    c.data.train_subset = 64
    c.progress_bar = False
  return c
