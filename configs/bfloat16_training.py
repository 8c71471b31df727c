"""float32 against bfloat16 compute (parameters, optimizer state and BatchNorm statistics stay
float32) in training: ResNet-20 on CIFAR-10, the `cpu` recipe of configs/cifar_resnet.py cut to
2,000 steps (lr 0.1, /10 at 50% and 75%), each dtype over seeds.

    python -m cnn_jax.sweep --config=configs/bfloat16_training.py --seeds=3 \\
        --workdir=workdirs/bfloat16_training
    python -m benchmarks.bfloat16_training --workdir=workdirs/bfloat16_training  # the comparison

`:toy` is the toy preset (seconds, for tests).
"""
from configs import cifar_resnet

STEPS = 2_000
DTYPES = ('float32', 'bfloat16')


def get_config(arg: str | None = None):
  if arg not in (None, '', 'toy'):
    raise ValueError(f'Unknown config argument {arg!r}; use nothing or "toy".')
  c = cifar_resnet.get_config('resnet20,toy' if arg == 'toy' else 'resnet20,cpu')
  c.name = 'bfloat16_training' + ('_toy' if arg == 'toy' else '')
  if arg != 'toy':
    c.num_steps = STEPS
    c.lr_boundaries = (STEPS // 2, STEPS * 3 // 4)
  c.gradient_diagnostics = False
  c.eval_test_curve = False
  c.progress_bar = False
  return c


def get_sweep(arg: str | None = None):
  del arg
  return [{'dtype': dtype} for dtype in DTYPES]
