"""Claim C12, second half: the CIFAR-10 plain-20 trained briefly under each initialisation.

    python -m experiments.init_variance                  # the dense stack, then these runs
    python -m cnn_jax.sweep --config=configs/init_training.py --workdir=workdirs/init_training

He et al.'s plain-20 (configs/cifar_resnet.py) *without BatchNorm* (`model_kwargs.norm='none'`,
the convs get zero-initialised biases): with BatchNorm after every conv the forward pass does not
see the kernels' scale, so an initialisation study needs it off. One member per conv-kernel
initialisation (cnn_jax.models.layers.KERNEL_INITS): He (Var = 2/n_in), LeCun (1/n_in), Xavier
(2/(n_in + n_out)), a fixed std of 0.01 and N(0, 1). SGD momentum 0.9, lr 0.01 (no warm-up, no
weight decay, so that only the initialisation differs), batch 128, 600 iterations, 4-px crop and
flip; training error on a fixed 2,000-image train subset at every evaluation, per-block signal
and gradient norms at init and along training (`gradient_diagnostics`).

Expected (lecture, He et al. 2015): He trains; LeCun/Xavier shrink the ReLU signal by about 2x
per layer (2^-19 over 19 ReLU layers), so they start far slower; std 0.01 vanishes and does not
learn; N(0, 1) overflows at once (a non-finite loss stops that run: recorded as diverged).
`:toy` runs plain-8 for 8 steps on 256 images under three of them, for tests.
"""
from configs import cifar_resnet

INITS = ('he', 'lecun', 'xavier', 'small', 'normal')  # cnn_jax.models.layers.KERNEL_INITS


def get_config(arg: str | None = None):
  if arg not in (None, '', 'toy'):
    raise ValueError(f'Unknown config argument {arg!r}; use nothing or "toy".')
  toy = arg == 'toy'
  c = cifar_resnet.get_config('plain8,toy' if toy else 'plain20')  # toy: the pipeline, quickly
  c.name = 'init_training' + ('_toy' if toy else '')
  c.model_kwargs.norm = 'none'
  c.model_kwargs.kernel_init = 'he'
  c.learning_rate = 0.01
  c.weight_decay = 0.0
  c.lr_schedule = 'constant'
  c.lr_boundaries = ()
  c.eval_test_curve = False
  c.gradient_diagnostics = True
  if toy:
    c.num_steps = 8
    c.eval_every_steps = 4
  else:
    c.num_steps = 600
    c.eval_every_steps = 100
    c.log_every_steps = 20
    c.checkpoint_every_steps = 200
    c.data.train_eval_size = 2_000
    c.progress_bar = False
  return c


def get_sweep(arg: str | None = None):
  inits = ('he', 'small', 'normal') if arg == 'toy' else INITS  # toy: learns, vanishes, blows up
  return [{'model_kwargs.kernel_init': name} for name in inits]
