"""AlexNet on ImageNet, the paper's recipe as far as the loop supports it: claim C16.

Krizhevsky, Sutskever & Hinton 2012, 'ImageNet classification with deep convolutional neural
networks' (sections 3-5): 227x227x3 input, conv 96 11x11/4 - LRN - max 3x3/2 - conv 256 5x5 -
LRN - max - conv 384, 384, 256 - max - FC 4096, 4096, 1000, ReLU, dropout 0.5 in the two hidden
FC layers; SGD batch 128, momentum 0.9, weight decay 5e-4, lr 1e-2 divided by 10 when the
validation error stops improving (three times over ~90 epochs); augmentation: random crops,
horizontal flips and PCA colour jitter (cnn_jax.augment). Paper: 40.7% top-1 / 18.2% top-5
error on ILSVRC-2012 val with one net (37.5% / 17.0% with test-time 10-crop averaging).

    python -m cnn_jax.main --config=configs/alexnet_imagenet.py --workdir=workdirs/alexnet \
        --config.data.data_dir=/path/to/imagenet     # train/<wnid>/*.jpg, test/<wnid>/*.jpg
    python -m cnn_jax.main --config=configs/alexnet_imagenet.py --workdir=workdirs/alexnet \
        --config.data.dataset=imagenet2012 --config.data.source=tfds \
        --config.data.data_dir=/path/to/tensorflow_datasets   # prepared as array_record

What the loop does of it, and what it does not:
  * data: an image folder (train/<class>/*.jpg, test/<class>/*.jpg, any sizes) or TFDS
    `imagenet2012` (its 'validation' split as the test split), each image's shorter side scaled
    to 256 and its central 256x256 kept (`data.resize`), as the paper prepares ImageNet;
    streamed (`data.pipeline='stream'`, cnn_jax.streaming): each batch is decoded on the host
    by a thread pool ahead of the step, since the 1.28M training images (~250 GB as uint8) do not
    fit on a device; crops, flips and colour jitter still run inside jit;
  * random 227x227 crops of the 256x256 images for training, the central crop for evaluation
    (`data.crop_size`), and horizontal flips; the final test also with the paper's 10 views
    (4 corners + centre, and mirrors; softmax averaged: `ten_crop_test`, results.json's
    test_10crop_*);
  * PCA colour jitter (`data.pca_jitter_std=0.1`): alpha ~ N(0, 0.1^2) along the principal
    components of the training split's RGB pixel values, here of a fixed sample of
    `data.stats_images` = 10,000 training images (the paper: the whole training set), which also
    gives the per-channel mean and std;
  * the paper's init (`model_kwargs.weight_init='paper'`): weights N(0, 0.01^2), biases 1 in
    conv2, conv4, conv5 and the hidden FCs, 0 elsewhere;
  * mean: per-channel mean/std normalisation instead of the paper's per-pixel mean image.
The model is the paper's single-tower net (`alexnet`, 62,378,344 parameters); set
`--config.model_kwargs.groups=2` for the two-GPU connectivity of conv2/4/5.

`:quick` runs one epoch on 2,560 training images (a smoke run of the recipe, no claim); `:toy`
two steps of batch 8 with narrow FC layers, for tests on a small generated folder.
"""
from cnn_jax import config_base

PAPER_EPOCHS = 90  # "roughly 90 cycles through the training set of 1.2 million images"


def get_config(arg: str | None = None):
  c = config_base.base_config()
  c.name = 'alexnet_imagenet'
  c.model = 'alexnet'  # 227x227 input, LRN after conv1/conv2, dropout 0.5 (model defaults)

  c.data.dataset = 'image_folder'
  c.data.source = 'folder'
  c.data.data_dir = ''  # required: split/class/*.jpg, any sizes (see docstring)
  c.data.validation_size = 10_000  # carved from train: plateau detection and model selection
  c.model_kwargs.weight_init = 'paper'  # N(0, 0.01^2) weights, biases 1 / 0 (sec. 5)
  c.data.resize = 256  # shorter side to 256, central 256x256 (sec. 2)
  c.data.crop_size = 227  # random 227x227 crops for training, the central one for evaluation
  c.data.pca_jitter_std = 0.1  # "alpha ... drawn from a Gaussian with mean zero and std 0.1"
  c.data.normalize = True
  c.data.horizontal_flip = True  # "horizontal reflections"
  c.data.pipeline = 'stream'  # decoded batch by batch on the host: ImageNet does not fit on a device
  c.data.stats_images = 10_000  # training images the mean, std and colour PCA come from
  c.ten_crop_test = True  # the paper's 10-view test averaging, beside the central-crop figure

  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = PAPER_EPOCHS
  c.optimizer = 'sgd'
  c.learning_rate = 1e-2
  c.momentum = 0.9
  # The paper's update v <- 0.9 v - 5e-4 lr w - lr g is an L2 term added to the gradient before
  # momentum, on every weight (and bias) -- config_base's non-decoupled weight decay.
  c.weight_decay = 5e-4
  c.decoupled_weight_decay = False
  c.lr_schedule = 'plateau'  # "divide the learning rate by 10 when the validation error rate
  c.lr_decay_factor = 0.1  # stopped improving with the current learning rate"
  c.plateau_patience = 5  # not given in the paper
  c.plateau_min_scale = 1e-3  # "reduced three times prior to termination": 1e-2 -> 1e-5
  c.selection_metric = 'val_accuracy'  # the paper watches the validation error rate
  c.log_every_steps = 100

  if arg == 'quick':
    c.name = 'alexnet_imagenet_quick'
    c.num_epochs = 1
    c.data.train_subset = 2_560
    c.data.validation_size = 512
    c.eval_batch_size = 256
    c.log_every_steps = 5
    c.progress_bar = False
  elif arg == 'toy':
    c.name = 'alexnet_imagenet_toy'
    c.num_epochs, c.num_steps = 1, 2
    c.batch_size, c.eval_batch_size = 8, 8
    c.data.validation_size = 4
    c.model_kwargs.hidden = 64  # the recipe's data path and layers, without 4096-wide FCs
    c.log_every_steps = 1
    c.progress_bar = False
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use nothing, "quick" or "toy".')
  return c
