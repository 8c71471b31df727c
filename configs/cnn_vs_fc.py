"""Claim C25: a CNN is an FC net with weight sharing and locality — far fewer parameters, better
generalisation on images, and small shifts of the digit leave its prediction (nearly) unchanged.

LeNet-5 (lecture variant, 61,706 parameters) against the registered 'mlp' given LeNet-5's depth
and the widths of its pooled maps: 784 -> 1176 -> 400 -> 120 -> 84 -> 10 (5 weight layers, ReLU;
1,453,094 parameters), on 1,000, 10,000 and all 58,976 MNIST training images, same optimiser and
budget: plain SGD lr 0.1, batch 64, 500 steps, best checkpoint by validation accuracy.

    python -m experiments.cnn_vs_fc                 # the sweep (x 3 seeds), shift test, report
    python -m cnn_jax.sweep --config=configs/cnn_vs_fc.py --seeds=3 --workdir=workdirs/cnn_vs_fc

`:toy` trains 40 steps on 500 and 2,000 images (seconds per run).
"""
from configs import lenet5_mnist

SIZES = (1000, 10000, 0)  # data.train_subset; 0 = all 58,976 (60,000 minus 1,024 validation)
TOY_SIZES = (500, 2000)
MLP_HIDDEN = (1176, 400, 120, 84)  # LeNet-5's S2, S4, C5, F6 widths (6*14*14, 16*5*5, 120, 84)


def get_config(arg: str | None = None):
  c = lenet5_mnist.get_config()
  c.name = 'cnn_vs_fc'
  c.num_steps = 500  # the same budget for every model and size: 32,000 images seen
  c.eval_every_steps = 100
  c.log_every_steps = 100
  c.selection_metric = 'val_accuracy'
  c.progress_bar = False
  if arg == 'toy':
    c.name = 'cnn_vs_fc_toy'
    c.num_steps = 40
    c.eval_every_steps = 20
    c.log_every_steps = 20
  elif arg:
    raise ValueError(f'Unknown config argument {arg!r}; use nothing or "toy".')
  return c


def get_sweep(arg: str | None = None):
  models = [{'model': 'lenet5', 'data.image_size': 32},
            {'model': 'mlp', 'data.image_size': 0, 'model_kwargs.hidden': MLP_HIDDEN}]
  sizes = TOY_SIZES if arg == 'toy' else SIZES
  return [{'data.train_subset': n, **m} for n in sizes for m in models]
