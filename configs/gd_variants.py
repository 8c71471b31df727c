"""Claim C13: full-batch gradient descent, SGD (batch 1) and mini-batch SGD on the same budget of
examples seen; validation curves; early stopping picks the best epoch.

LeNet-5 on a 512-image MNIST subset (so that batch-1 SGD is affordable), 1,024 validation images,
30 epochs = 15,360 examples seen by every variant: GD takes 30 steps of 512 images, mini-batch
SGD 240 steps of 64, SGD 15,360 steps of 1. Learning rate 0.1 (the lecture's) for GD and
mini-batch, 0.01 for batch 1 (a single example's gradient is ~8x noisier than a batch of 64's).
The best checkpoint is the epoch of lowest validation loss (early stopping's choice).

    python -m experiments.gd_variants              # the sweep (x 3 seeds) and report
    python -m cnn_jax.sweep --config=configs/gd_variants.py --seeds=3 --workdir=workdirs/gd_variants

`:toy`: 128 images, 5 epochs.
"""
from configs import lenet5_mnist

SUBSET = 512
VARIANTS = (  # (batch size, learning rate); batch SUBSET = full-batch GD
    (SUBSET, 0.1), (64, 0.1), (1, 0.01))


def get_config(arg: str | None = None):
  c = lenet5_mnist.get_config()
  c.name = 'gd_variants'
  c.data.train_subset = SUBSET
  c.num_epochs = 30
  c.eval_every_epochs = 1  # a validation point after every pass over the subset
  c.log_every_steps = 10 ** 9  # train metrics once per epoch (the epoch's mean)
  c.selection_metric = 'val_loss'  # C13: early stopping on the validation objective
  c.early_stopping_patience = 0  # run the whole budget so the curves are complete
  c.progress_bar = False
  if arg == 'toy':
    c.name = 'gd_variants_toy'
    c.data.train_subset = 128
    c.num_epochs = 5
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use nothing or "toy".')
  return c


def get_sweep(arg: str | None = None):
  subset = get_config(arg).data.train_subset
  return [{'batch_size': subset if b == SUBSET else b, 'learning_rate': lr} for b, lr in VARIANTS]
