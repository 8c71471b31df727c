"""CIFAR-10 ResNets and their plain twins (He et al. 2016, section 4.2): claims C20, C21.

    python -m cnn_jax.main --config=configs/cifar_resnet.py:resnet56 --workdir=workdirs/resnet56
    python -m experiments.degradation --preset=cpu      # plain vs residual, 20 and 56 layers

`get_config('<model>[,<preset>]')`, model one of plain{20,32,44,56,110}, resnet{8,20,...,1202}:

* no preset: the paper's recipe with the paper's model selection split. Batch 128, SGD momentum
  0.9, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k, weight decay 1e-4 as an L2
  term on every parameter, He-normal init (fan_out, as torchvision), 4-pixel zero padding +
  random 32x32 crop + horizontal flip, 45k/5k train/validation split. Expected (Table 6):
  ResNet-20/32/44/56/110 test error 8.75/7.51/7.17/6.97/6.43% (on the original CIFAR-10; the
  offline copy is JPEG-compressed, so expect somewhat higher).
* `paper`: the same on all 50k training images (the paper's final protocol; no validation).
* `cpu`: a reduced protocol for a 2-core CPU, same nets and recipe, schedule scaled to 3,000
  iterations (lr /10 at 1,500 and 2,250; see reports/degradation_cpu for what it shows).
* `quarter`: a quarter of the schedule for a 2-core CPU (reports/degradation_quarter): the
  recipe unchanged for 16,000 iterations (lr /10 at 8,000 and 12,000), trained on all 50k
  training images as for Table 6. The schedule is the paper's, fixed in advance (He et al. chose
  it on a 45k/5k split), so there is nothing to select and no validation split is needed; the
  errors reported are those of the last state, training error on a fixed 5,000-image training
  subset, test error on the test split every 500 iterations (curves and time to accuracy, never
  selection). Measured wall time per run: reports/degradation_quarter.
* `quick`: 400 iterations, minutes on a CPU.
* `toy`: a few steps on 512 images, seconds, for tests.
* `tta`: not the paper's recipe but a short one for time to accuracy (benchmarks/
  time_to_accuracy.py, target 85% test accuracy): all 50k training images (no validation
  split: the test curve is the measurement), 20 epochs, lr 0.1 cosine to 0, weight decay 5e-4,
  test evaluation every epoch, no training-set curve or gradient diagnostics. On a 2-core AVX2
  EPYC (CPU kernels with the direct kernel gradient, jemalloc; 2026-12-06) it reached 85.0%
  after 17 epochs in 32 min and ended at 86.05% in 38 min
  (benchmarks/results/time_to_accuracy_resnet20.json; before the direct kernel gradient: 85.2%
  after 18 epochs in 40 min); 15 epochs had ended at 84.78%, just short (2026-12-03).

The lecture (notes 003) gives weight decay 1e-5 for ImageNet ResNets; He et al. use 1e-4, kept.
The data default to the offline JPEG copy, `../shared/data/cifar10-jpeg` beside the repository
(`--config.data.data_dir=DIR` for another image folder, `--config.data.source=tfds` for TFDS).
Errors are measured without augmentation: training error on a fixed 5,000-image subset of the
training split, test error on the full test split, at every evaluation point.
"""
from cnn_jax import config_base

MODELS = tuple(f'plain{d}' for d in (8, 20, 32, 44, 56, 110)) + tuple(
    f'resnet{d}' for d in (8, 20, 32, 44, 56, 110, 1202))
PRESETS = ('paper', 'quarter', 'cpu', 'quick', 'toy', 'tta')

# Paper schedule (iterations): lr / 10 at 32k and 48k, stop at 64k; presets scale it.
PAPER_STEPS, PAPER_BOUNDARIES = 64_000, (32_000, 48_000)
PRESET_STEPS = {'quarter': 16_000, 'cpu': 3_000, 'quick': 400, 'toy': 16}


def get_config(arg: str | None = None):
  model, _, preset = (arg or 'resnet20').partition(',')
  if model not in MODELS:
    raise ValueError(f'Unknown model {model!r} for cifar_resnet; use one of {", ".join(MODELS)} '
                     f'optionally followed by ",<preset>" with a preset in {PRESETS}.')
  if preset and preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; use one of {PRESETS} (or none for the recipe).')
  c = config_base.base_config()
  c.name = f'{model}_cifar10' + (f'_{preset}' if preset else '')
  c.model = model
  c.data.dataset = 'cifar10'
  c.data.source = 'folder'  # the offline JPEG copy; 'tfds' for TFDS cifar10
  c.data.validation_size = 5_000  # 45k/5k train/validation split (He et al. 4.2)
  c.data.random_crop_padding = 4
  c.data.horizontal_flip = True
  c.data.train_eval_size = 5_000  # training error: a fixed train subset, no augmentation

  c.batch_size = 128
  c.eval_batch_size = 1_000
  c.optimizer = 'sgd'
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4  # L2 term on all parameters, as in the paper (lecture: 1e-5)
  c.lr_schedule = 'step'
  c.schedule_unit = 'steps'
  c.lr_decay_factor = 0.1
  c.num_steps = PAPER_STEPS
  c.lr_boundaries = PAPER_BOUNDARIES
  c.selection_metric = 'val_accuracy'
  c.eval_every_steps = 2_000
  c.eval_test_curve = True  # Figure 6 plots test error along training
  c.gradient_diagnostics = True  # C20: per-block signal and gradient norms
  c.checkpoint_every_steps = 500
  c.log_every_steps = 100

  if preset in PRESET_STEPS:
    steps = PRESET_STEPS[preset]
    c.num_steps = steps
    c.lr_boundaries = tuple(b * steps // PAPER_STEPS for b in PAPER_BOUNDARIES)
    c.eval_every_steps = {'quarter': 500, 'cpu': 250, 'quick': 100, 'toy': 8}[preset]
    c.checkpoint_every_steps = {'quarter': 500, 'cpu': 250, 'quick': 100, 'toy': 0}[preset]
    c.log_every_steps = {'quarter': 100, 'cpu': 50, 'quick': 25, 'toy': 4}[preset]
  if preset in ('paper', 'quarter'):
    c.data.validation_size = 0  # all 50k training images, as the paper's final runs
  if preset == 'tta':
    c.num_steps = 0
    c.num_epochs = 20
    c.lr_schedule = 'cosine'
    c.schedule_unit = 'epochs'
    c.lr_boundaries = ()
    c.weight_decay = 5e-4
    c.eval_every_steps = 0
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 0
    c.data.train_eval_size = 0
    c.data.validation_size = 0
    c.gradient_diagnostics = False
  if preset == 'toy':
    c.batch_size = 32
    c.eval_batch_size = 256
    c.data.validation_size = 256
    c.data.train_subset = 512
    c.data.train_eval_size = 256
    c.progress_bar = False
  return c
