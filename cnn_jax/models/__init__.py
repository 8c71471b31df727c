"""The model zoo: one explicit registry, no registration by import side effects.

    model = cnn_jax.models.create('resnet20', num_classes=10)
    variables = model.init({'params': key}, x, train=False)
    logits = model.apply(variables, x, train=False)

Conventions shared by every model (see docs/models.md):
  * inputs are NHWC float arrays; `__call__(x, train: bool = False)` returns float32 logits;
  * BatchNorm statistics live in the `batch_stats` collection and move only when `train=True`;
  * dropout is active only when `train=True` and needs an rng named 'dropout';
  * named feature maps (stem, stages, pre_logits) are sown into the `intermediates` collection,
    read them with `feature_maps(...)`;
  * `dtype` sets the computation dtype (e.g. bfloat16 on accelerators); parameters stay float32.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable

import flax.linen as nn
import jax

from cnn_jax.models import lenet
from cnn_jax.models import alexnet, googlenet, mlp, unet, vgg
from cnn_jax.models import cifar_cnn, cifar_resnet, cifar_zoo, densenet, resnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry: a module constructor and the input it was designed for."""
  ctor: Callable[..., nn.Module]
  input_shape: tuple[int, int, int]  # canonical (H, W, C)
  fixed_input: bool = False  # True when other input sizes break the layer arithmetic
  task: str = 'classification'  # what it predicts, hence its loss and metrics (cnn_jax.tasks)


_REGISTRY: dict[str, ModelSpec] = {
    'lenet5': ModelSpec(lenet.LeNet5, (32, 32, 1), fixed_input=True),
    # Classic CNNs (C14, C16-C19, C23, C25): LeNet-5 1998, FC baseline, AlexNet, ZFNet, VGG,
    # GoogLeNet (torchvision layouts where torchvision has the net) and U-Net.
    'lenet5_classic': ModelSpec(lenet.LeNet5Classic, (32, 32, 1), fixed_input=True),
    'mlp': ModelSpec(mlp.MLP, (28, 28, 1), fixed_input=True),
    'alexnet': ModelSpec(alexnet.alexnet, (227, 227, 3), fixed_input=True),
    'alexnet_tv': ModelSpec(alexnet.alexnet_tv, (224, 224, 3), fixed_input=False),
    'zfnet': ModelSpec(alexnet.zfnet, (224, 224, 3), fixed_input=True),
    'vgg11': ModelSpec(vgg.vgg11, (224, 224, 3), fixed_input=False),
    'vgg13': ModelSpec(vgg.vgg13, (224, 224, 3), fixed_input=False),
    'vgg16': ModelSpec(vgg.vgg16, (224, 224, 3), fixed_input=False),
    'vgg19': ModelSpec(vgg.vgg19, (224, 224, 3), fixed_input=False),
    'vgg11_bn': ModelSpec(vgg.vgg11_bn, (224, 224, 3), fixed_input=False),
    'vgg13_bn': ModelSpec(vgg.vgg13_bn, (224, 224, 3), fixed_input=False),
    'vgg16_bn': ModelSpec(vgg.vgg16_bn, (224, 224, 3), fixed_input=False),
    'vgg19_bn': ModelSpec(vgg.vgg19_bn, (224, 224, 3), fixed_input=False),
    'googlenet': ModelSpec(googlenet.googlenet, (224, 224, 3), fixed_input=False),
    # U-Net checks its own input sides (cnn_jax.models.unet.output_side) and names valid ones.
    'unet': ModelSpec(unet.unet, (572, 572, 1), task='segmentation'),
    'unet_same': ModelSpec(unet.unet_same, (256, 256, 1), task='segmentation'),
    # ImageNet ResNets (torchvision), CIFAR ResNets and plain twins (He et al. 2016 §4.2).
    'resnet18': ModelSpec(resnet.ResNet18, (224, 224, 3), fixed_input=False),
    'resnet34': ModelSpec(resnet.ResNet34, (224, 224, 3), fixed_input=False),
    'resnet50': ModelSpec(resnet.ResNet50, (224, 224, 3), fixed_input=False),
    'resnet101': ModelSpec(resnet.ResNet101, (224, 224, 3), fixed_input=False),
    'resnet152': ModelSpec(resnet.ResNet152, (224, 224, 3), fixed_input=False),
    'resnet8': ModelSpec(cifar_resnet.ResNet8, (32, 32, 3), fixed_input=False),
    'resnet20': ModelSpec(cifar_resnet.ResNet20, (32, 32, 3), fixed_input=False),
    'resnet32': ModelSpec(cifar_resnet.ResNet32, (32, 32, 3), fixed_input=False),
    'resnet44': ModelSpec(cifar_resnet.ResNet44, (32, 32, 3), fixed_input=False),
    'resnet56': ModelSpec(cifar_resnet.ResNet56, (32, 32, 3), fixed_input=False),
    'resnet110': ModelSpec(cifar_resnet.ResNet110, (32, 32, 3), fixed_input=False),
    'resnet1202': ModelSpec(cifar_resnet.ResNet1202, (32, 32, 3), fixed_input=False),
    'plain8': ModelSpec(cifar_resnet.Plain8, (32, 32, 3), fixed_input=False),
    'plain20': ModelSpec(cifar_resnet.Plain20, (32, 32, 3), fixed_input=False),
    'plain32': ModelSpec(cifar_resnet.Plain32, (32, 32, 3), fixed_input=False),
    'plain44': ModelSpec(cifar_resnet.Plain44, (32, 32, 3), fixed_input=False),
    'plain56': ModelSpec(cifar_resnet.Plain56, (32, 32, 3), fixed_input=False),
    'plain110': ModelSpec(cifar_resnet.Plain110, (32, 32, 3), fixed_input=False),
    # DenseNets (torchvision) and DenseNet-BC (L=100, k=12) for CIFAR (Huang et al. 2017).
    'densenet121': ModelSpec(densenet.DenseNet121, (224, 224, 3), fixed_input=False),
    'densenet169': ModelSpec(densenet.DenseNet169, (224, 224, 3), fixed_input=False),
    'densenet201': ModelSpec(densenet.DenseNet201, (224, 224, 3), fixed_input=False),
    'densenet_bc_100_12': ModelSpec(densenet.DenseNetBC100k12, (32, 32, 3), fixed_input=False),
    # A small CIFAR-10 CNN with a choice of normalisation (C11: none, batch, layer, instance, group).
    'cifar_cnn': ModelSpec(cifar_cnn.CifarCNN, (32, 32, 3), fixed_input=False),
    # The classic ImageNet nets adapted to 32x32 CIFAR images (cnn_jax/models/cifar_zoo.py says how).
    'vgg11_bn_cifar': ModelSpec(cifar_zoo.vgg11_bn_cifar, (32, 32, 3), fixed_input=False),
    'vgg16_bn_cifar': ModelSpec(cifar_zoo.vgg16_bn_cifar, (32, 32, 3), fixed_input=False),
    'resnet18_cifar': ModelSpec(cifar_zoo.resnet18_cifar, (32, 32, 3), fixed_input=False),
    'googlenet_cifar': ModelSpec(cifar_zoo.googlenet_cifar, (32, 32, 3), fixed_input=False),
    'alexnet_cifar': ModelSpec(cifar_zoo.alexnet_cifar, (32, 32, 3), fixed_input=True),
    'zfnet_cifar': ModelSpec(cifar_zoo.zfnet_cifar, (32, 32, 3), fixed_input=True),
}


def names() -> list[str]:
  """Every registered model name, sorted."""
  return sorted(_REGISTRY)


def spec(name: str) -> ModelSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''
    raise ValueError(
        f"Unknown model {name!r}.{hint} Known models: {', '.join(names())}."
    ) from None


def input_shape(name: str) -> tuple[int, int, int]:
  """The canonical (H, W, C) input of a model."""
  return spec(name).input_shape


def create(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the linen module registered as `name`; `overrides` set module fields."""
  ctor = spec(name).ctor
  cls = getattr(ctor, 'func', ctor)  # functools.partial aliases: check the class's fields
  fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
  if fields is not None:
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(
          f'Model {name!r} has no field(s) {unknown}; its fields are '
          f"{sorted(f for f in fields if f not in ('parent', 'name'))}.")
  return ctor(num_classes=num_classes, **overrides)


def feature_maps(model: nn.Module, variables: Any, x: jax.Array) -> dict[str, jax.Array]:
  """Runs `model` in eval mode and returns its sown feature maps by name."""
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  return {k: v[0] for k, v in state['intermediates'].items()}
