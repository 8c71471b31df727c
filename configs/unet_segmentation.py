"""U-Net segmentation of MNIST digits on a canvas (Ronneberger et al. 2015): claim C23.

    python -m experiments.unet_segmentation                      # both nets, report + figure
    python -m cnn_jax.main --config=configs/unet_segmentation.py:unet_same --workdir=workdirs/unet_same
    python -m cnn_jax.main --config=configs/unet_segmentation.py:unet,toy --workdir=/tmp/unet_toy

`get_config('<model>[,<preset>]')`, model 'unet' (the paper's valid convolutions with the output
crop) or 'unet_same' (same padding: the output keeps the input's size). The data are
`mnist_segmentation`: 64x64 canvases with 1-3 MNIST digits, 11 classes (background + ten digits),
train canvases from MNIST train and test canvases from MNIST test. The loss is the per-pixel
cross-entropy; metrics are pixel accuracy and mean IoU over the 11 classes (cnn_jax.tasks).

Valid padding shrinks the map by 4 pixels per double conv, so the paper feeds a larger tile and
predicts its centre (the overlap-tile strategy, missing context mirrored). Here the 64x64 canvas
is padded with black, its own background, to the smallest tile whose output covers the canvas
(`tile_side`), and the output is aligned with the mask by a centre crop (cnn_jax.tasks.align).

* no preset (`cpu`): a reduced protocol for a 2-core CPU: both nets at a quarter of the paper's
  width (`features=16`, i.e. 16-32-64 + 128) and three poolings instead of four (the 64x64 canvas
  has no room for a fourth); 6,000 train canvases (+500 validation), 2,000 test, Adam lr 1e-3,
  batch 32, 4 epochs. Not yet run to the end here (the shared 2-core CPU gave ~10 images/s at
  the time); reports/unet_segmentation/report.md will hold the numbers it reaches.
* `long`: the `cpu` protocol trained until it stops improving (reports/unet_segmentation_long):
  the same nets and data, 30 epochs (5,640 steps) with the cosine schedule over them, validated
  every epoch, with the test curve recorded too. The report calls a run plateaued when its best
  validation mIoU in the last quarter of the evaluations is no more than 0.005 above the best
  before it (validation decides; the test split is never used to choose). About 30 min for
  unet_same and 90 min for unet on 2 AVX-512 cores, idle.
* `full`: the paper's net (features 64, depth 4: 31.0M parameters) on 60k canvases, 20 epochs;
  accelerator-sized, not run here.
* `toy`: seconds, for tests: 32x32 canvases with one digit, a tiny net, 1,024 canvases, 96
  steps. It learns where the digits are (test loss far below the image-blind 0.55 nats) but not
  yet which digit they are (mIoU about 0.09, as all-background).

The paper trains with SGD (momentum 0.99) on single large tiles and a weighted loss that stresses
the borders between touching cells; neither is used here (digits never touch on the canvas).
"""
from cnn_jax import config_base
from cnn_jax.models import unet

MODELS = ('unet', 'unet_same')
PRESETS = ('cpu', 'long', 'full', 'toy')


def tile_side(canvas: int, depth: int) -> int:
  """The smallest valid input side of a valid-padding U-Net whose output covers `canvas`."""
  side = canvas
  while (unet.output_side(side, depth, 'VALID') or 0) < canvas:
    side += 1
  return side


def get_config(arg: str | None = None):
  model, _, preset = (arg or 'unet_same').partition(',')
  if model not in MODELS:
    raise ValueError(f'Unknown model {model!r} for unet_segmentation; use one of {MODELS}, '
                     f'optionally followed by ",<preset>" with a preset in {PRESETS}.')
  if preset and preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; use one of {PRESETS} (none = cpu).')
  preset = preset or 'cpu'
  c = config_base.base_config()
  c.name = f'{model}_mnist_segmentation_{preset}'
  c.model = model
  c.data.dataset = 'mnist_segmentation'
  c.data.source = 'bundled'  # generated from the bundled MNIST
  c.data.segmentation.size = 64  # canvas side
  c.data.segmentation.max_digits = 3
  c.data.segmentation.seed = 0
  c.data.segmentation.num_train = 6_500  # 6,000 train + 500 validation
  c.data.segmentation.num_test = 2_000
  c.data.validation_size = 500
  c.data.train_eval_size = 500  # training error, without augmentation, at each validation
  # Digits are not mirror-symmetric and are placed anywhere already: no augmentation.
  c.data.random_crop_padding = 0
  c.data.horizontal_flip = False
  c.model_kwargs.features = 16  # the paper: 64
  c.model_kwargs.depth = 3  # the paper: 4

  c.batch_size = 32
  c.eval_batch_size = 100
  c.num_epochs = 4
  c.optimizer = 'adamw'
  c.learning_rate = 1e-3
  c.weight_decay = 0.0
  c.lr_schedule = 'cosine'
  c.selection_metric = 'val_loss'
  c.log_every_steps = 50

  if preset == 'long':
    c.num_epochs = 30
    c.eval_test_curve = True  # the test mIoU along training, for the report's curves only
  elif preset == 'full':
    c.data.segmentation.num_train = 61_000  # 60,000 train + 1,000 validation
    c.data.segmentation.num_test = 10_000
    c.data.validation_size = 1_000
    c.model_kwargs.features = 64
    c.model_kwargs.depth = 4
    c.num_epochs = 20
    c.eval_batch_size = 50
    c.log_every_steps = 200
  elif preset == 'toy':
    c.data.segmentation.size = 32
    c.data.segmentation.max_digits = 1
    c.data.segmentation.num_train = 1_024 + 128
    c.data.segmentation.num_test = 256
    c.data.validation_size = 128
    c.data.train_eval_size = 0
    c.model_kwargs.features = 8
    c.model_kwargs.depth = 2
    c.batch_size = 32
    c.eval_batch_size = 128
    c.num_epochs = 3
    c.learning_rate = 3e-3
    c.log_every_steps = 16
    c.progress_bar = False
  if model == 'unet':  # the overlap-tile input: the canvas padded so the output covers it
    c.data.image_size = tile_side(c.data.segmentation.size, c.model_kwargs.depth)
  return c
