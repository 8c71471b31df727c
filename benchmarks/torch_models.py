"""PyTorch twins of cnn_jax models, for the benchmark baseline only (same layers, same counts)."""
import functools

import torch
from torch import nn
import torch.nn.functional as F


class LeNet5(nn.Module):
  def __init__(self, num_classes=10):
    super().__init__()
    self.c1, self.c3, self.c5 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5), nn.Conv2d(16, 120, 5)
    self.f6, self.head = nn.Linear(120, 84), nn.Linear(84, num_classes)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.c1(x)), 2)
    x = F.max_pool2d(F.relu(self.c3(x)), 2)
    x = F.relu(self.c5(x)).flatten(1)
    return self.head(F.relu(self.f6(x)))


class BasicBlock(nn.Module):
  """He et al. 2016 CIFAR block; option-A shortcut (subsample + zero channels)."""

  def __init__(self, c_in, c_out, stride, residual=True):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.residual, self.stride, self.pad = residual, stride, c_out - c_in

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    if self.residual:
      s = x[:, :, ::self.stride, ::self.stride]
      # Zero channels split evenly before and after, as cnn_jax.models.resnet.shortcut_a.
      y = y + (F.pad(s, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2)) if self.pad else s)
    return F.relu(y)


class CifarResNet(nn.Module):
  def __init__(self, depth, num_classes=10, residual=True):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    blocks, c_in = [], 16
    for stage, c_out in enumerate((16, 32, 64)):
      for i in range(n):
        blocks.append(BasicBlock(c_in, c_out, 2 if (i == 0 and stage > 0) else 1, residual))
        c_in = c_out
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Bottleneck(nn.Module):
  """torchvision's ResNet v1.5 bottleneck (stride on the 3x3), as cnn_jax.models.resnet."""

  def __init__(self, c_in, planes, stride):
    super().__init__()
    c_out = 4 * planes
    self.body = nn.Sequential(
        nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
        nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(),
        nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
    self.proj = None if (stride == 1 and c_in == c_out) else nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

  def forward(self, x):
    return F.relu(self.body(x) + (x if self.proj is None else self.proj(x)))


class ResNet50(nn.Module):
  """He et al. 2016's ResNet-50 for 224x224 ImageNet (25,557,032 parameters at 1,000 classes)."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                              nn.ReLU(), nn.MaxPool2d(3, 2, 1))
    blocks, c_in = [], 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
      for i in range(n):
        blocks.append(Bottleneck(c_in, planes, 2 if (i == 0 and stage > 0) else 1))
        c_in = 4 * planes
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(c_in, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


_MODELS = {
    'lenet5': LeNet5,
    'resnet20': functools.partial(CifarResNet, 20),
    'resnet56': functools.partial(CifarResNet, 56),
    'plain20': functools.partial(CifarResNet, 20, residual=False),
    'plain56': functools.partial(CifarResNet, 56, residual=False),
    'resnet50': ResNet50,
}


def create(name: str) -> nn.Module:
  return _MODELS[name]()


def num_params(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
