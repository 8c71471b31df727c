"""Claim C15: one epoch of LeNet-5 on MNIST at learning rates 1, 0.1 and 0.01.

The lecture (notes 004): SGD, batch 64, 1,024 validation images taken from train; after one epoch
alpha = 1 has not learned, alpha = 0.1 converges faster and lower than alpha = 0.01.

    python -m experiments.lr_sweep                          # report in workdirs/lr_sweep
    python -m cnn_jax.sweep --config=configs/lr_sweep.py --workdir=workdirs/lr_sweep   # runs only

Expected: alpha = 1 stays at chance (or diverges), alpha = 0.1 ends with a lower training loss
than alpha = 0.01 (reports/lr_sweep/report.md). `:toy` uses 2,000 training images (seconds).
"""
from configs import lenet5_mnist

LEARNING_RATES = (1.0, 0.1, 0.01)  # C15


def get_config(arg: str | None = None):
  c = lenet5_mnist.get_config()
  c.name = 'lr_sweep'
  c.num_epochs = 1  # C15: one epoch
  c.log_every_steps = 10  # training-loss curve: the mean of every 10 steps
  c.progress_bar = False
  if arg == 'toy':
    c.name = 'lr_sweep_toy'
    c.data.train_subset = 2000  # 31 steps of batch 64
    c.log_every_steps = 2
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use nothing or "toy".')
  return c


def get_sweep(arg: str | None = None):
  del arg
  return [{'learning_rate': lr} for lr in LEARNING_RATES]
