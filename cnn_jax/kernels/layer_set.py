"""The CPU layer set: the models' convolution, BatchNorm and max pooling as they run fast on a CPU.

    layers = layer_set.for_config(config)          # what config.cpu_kernels asks for, here
    apply = models.layer_set.bind(model.apply, layers)

Same functions as the stock set (cnn_jax.models.layer_set), computed with this package: the
oneDNN convolution kernel and the BatchNorm(+ReLU, +residual) kernel where they apply, im2col
for maps no bigger than the kernel (conv.py), and max pooling and BatchNorm with backward passes
XLA's CPU backend runs fast (pooling.py, ops.py). Reverse mode and `vmap` work; forward mode
(`jax.jvp`, `jax.jacfwd`, `jax.hessian`) stops with ForwardModeError, which names the switch
to the stock set (`config.cpu_kernels='off'`). On other platforms `for_config` returns the stock
set.
"""
from __future__ import annotations

import functools

import jax
from jax.interpreters import ad

from cnn_jax import runtime
from cnn_jax.config_base import ConfigError, check_cpu_kernels
from cnn_jax.kernels import conv, library, ops, pooling
from cnn_jax.models.layer_set import STOCK, LayerSet


class ForwardModeError(TypeError):
  """Forward-mode differentiation reached a layer of the CPU layer set."""


def _in_forward_mode(args) -> bool:
  for tracer in jax.tree.leaves(args):
    while isinstance(tracer, jax.core.Tracer):  # a linearize tracer wraps the outer JVP's
      if isinstance(tracer, ad.JVPTracer):
        return True
      tracer = getattr(tracer, 'primal', None)
  return False


def _reverse_mode_only(name: str, fn):
  """`fn` that stops with one clear error under forward-mode differentiation (its backward
  passes are custom VJPs, which JAX cannot differentiate forwards)."""

  @functools.wraps(fn)
  def layer(*args, **kwargs):
    if _in_forward_mode((args, kwargs)):
      raise ForwardModeError(
          f'Forward-mode differentiation (jax.jvp, jax.jacfwd, jax.hessian) reached {name} of the '
          "CPU layer set, which differentiates in reverse mode only: set config.cpu_kernels='off' "
          '(or trace the model outside cnn_jax.models.layer_set.using), whose layers are JAX\'s own.')
    return fn(*args, **kwargs)

  return layer


def cpu_layers(kernels: frozenset[str] = frozenset(library.KERNELS),
               kernel_gradient: str = 'direct', winograd: bool = True) -> LayerSet:
  """The CPU layer set running the named kernels (the others' layers run XLA's ops), with the
  convolutions' kernel gradient `kernel_gradient` ('direct': conv_kernel_gradient.h or
  conv_kernel_gradient_bf16.h where they apply; 'onednn': oneDNN's everywhere), and their
  forward, input gradient and kernel gradient by Winograd's F(2x2, 3x3) where it applies if
  `winograd` (conv_winograd.h, before the direct kernel gradient). One object per choice, so
  jit's cache is shared."""
  return _cpu_layers(frozenset(kernels), kernel_gradient, bool(winograd))


@functools.cache
def _cpu_layers(kernels: frozenset[str], kernel_gradient: str, winograd: bool) -> LayerSet:
  unknown = sorted(set(kernels) - set(library.KERNELS))
  if unknown:
    raise ValueError(f'Unknown CPU kernels {unknown}; the kernels are {sorted(library.KERNELS)}.')
  use_conv, use_bn = 'conv2d' in kernels, 'batch_norm' in kernels

  def batch_norm_train(x, scale, bias, epsilon, relu=False, residual=None):
    return ops.batch_norm_train(x, scale, bias, epsilon, relu, residual, kernel=use_bn)

  if kernel_gradient not in runtime.KERNEL_GRADIENT_CHOICES:
    raise ValueError(f'kernel_gradient={kernel_gradient!r}: use one of '
                     f'{runtime.KERNEL_GRADIENT_CHOICES}.')
  gradient_note = '; oneDNN kernel gradient' if kernel_gradient == 'onednn' else ''
  gradient_note += '' if winograd else '; no Winograd'
  return LayerSet(
      f"cpu ({', '.join(sorted(kernels)) or 'no kernels'}{gradient_note})",
      _reverse_mode_only('the convolution',
                         functools.partial(conv.conv_general_dilated, kernel=use_conv,
                                           direct_kernel_gradient=kernel_gradient == 'direct',
                                           winograd=winograd)),
      _reverse_mode_only('BatchNorm', batch_norm_train),
      _reverse_mode_only('max pooling', pooling.max_pool))


def for_config(config) -> LayerSet:
  """The layer set `config.cpu_kernels` chooses for this process's default backend: the stock set
  off a CPU or for 'off'; else the CPU set with the kernels asked for ('auto': those that build
  here, on one device; 'on' or names: each must build, on one device, else ConfigError)."""
  choice = check_cpu_kernels(config.cpu_kernels)
  gradient, winograd = runtime.conv_kernel_gradient(), runtime.conv_winograd()
  if choice == ('off',) or jax.default_backend() != 'cpu':
    return STOCK
  wanted = library.KERNELS if choice in (('auto',), ('on',)) else choice
  if choice == ('auto',):
    on_one_device = jax.device_count() == 1
    return cpu_layers(frozenset(n for n in wanted if on_one_device and library.load(n)), gradient,
                      winograd)
  if jax.device_count() != 1:
    raise ConfigError(f'config.cpu_kernels={config.cpu_kernels!r} needs one device (the kernels '
                      f'are opaque to XLA\'s partitioner; this program has {jax.device_count()}); '
                      "use 'auto' or 'off'.")
  missing = [n for n in wanted if not library.load(n)]
  if missing:
    raise ConfigError(f'config.cpu_kernels={config.cpu_kernels!r}: CPU kernel(s) {missing} cannot '
                      f'be used here ({library.status()}); use \'auto\' or \'off\'.')
  return cpu_layers(frozenset(wanted), gradient, winograd)
