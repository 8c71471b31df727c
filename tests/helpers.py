"""Small configs and subprocess helpers shared by the tests."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from cnn_jax.datasets import CIFAR10_CLASSES
from configs import lenet5_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """LeNet-5 on a 1,000-image MNIST subset, SGD with momentum: 20 steps an epoch at batch 50."""
  c = lenet5_mnist.get_config()
  c.name = 'tiny'
  c.data.train_subset = 1000
  c.batch_size = 50
  c.num_epochs = 3
  c.momentum = 0.9
  c.learning_rate = 0.05
  c.log_every_steps = 5
  c.progress_bar = False
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  c.lock()
  return c


def run_python(code: str, devices: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs `code` in a fresh interpreter with `devices` forced CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def run_module(args, timeout: int = 300, env_extra=None) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, **(env_extra or {}))
  return subprocess.run([sys.executable, '-m'] + list(args), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def cifar_like_folder(root, per_class=(40, 8), classes=CIFAR10_CLASSES):
  """train/ and test/ of 32x32 RGB PNGs, per_class images a class: a class-dependent colour plus
  noise, so a CIFAR net can learn it in a few steps."""
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'test'), per_class):
    for k, name in enumerate(classes):
      d = root / split / name
      d.mkdir(parents=True)
      for i in range(n):
        base = np.array([25 * k, 255 - 25 * k, 128], np.float32)
        img = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f'{i:04d}.png')
  return root
