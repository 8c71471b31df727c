"""Convolution arithmetic: output sizes, receptive fields, parameter and MAC counts.

Every formula here is checked against real convolutions in tests/test_conv_arithmetic.py.
Claim ids refer to shared/CLAIMS.md beside the repository (C1–C10, C18).

    conv_output_size(32, 5)                     # 28   (C4)
    receptive_field([(3, 1)] * 3)               # 7    (C7)
    conv_params(3, 6, 5)                        # 456
    count_flops(create('lenet5', num_classes=10), (32, 32, 1)).macs
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Padding = Union[int, tuple[int, int], str]


def _pair(v: int | Sequence[int]) -> tuple[int, ...]:
  return (v, v) if isinstance(v, int) else tuple(v)


# --------------------------------------------------------------------------------------------
# Output sizes (C4, C5, C6)
# --------------------------------------------------------------------------------------------

def effective_kernel(kernel: int, dilation: int = 1) -> int:
  """Extent of a dilated kernel: d(K − 1) + 1 (C4)."""
  return dilation * (kernel - 1) + 1


def same_padding(in_size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
  """(low, high) zero padding that XLA/TF 'SAME' uses: output ceil(W/s), extra pixel at the end.

  For odd K and stride 1 this is ((K − 1)/2, (K − 1)/2). Lecture note 000 gives (K + 1)/2, which
  is wrong: with K = 5 on a 32-wide input it pads 3 per side and gives 34 outputs, not 32 (C4).
  """
  out = -(-in_size // stride)
  total = max((out - 1) * stride + effective_kernel(kernel, dilation) - in_size, 0)
  return total // 2, total - total // 2


def same_padding_odd(kernel: int) -> int:
  """Symmetric padding that keeps the size at stride 1: (K − 1)/2, odd K only (C4)."""
  if kernel % 2 != 1:
    raise ValueError(f'an even kernel ({kernel}) has no symmetric size-preserving padding')
  return (kernel - 1) // 2


def lecture_same_padding(kernel: int) -> float:
  """The lecture's (note 000) 'same' padding, (K + 1)/2 — kept only to show it is wrong (C4)."""
  return (kernel + 1) / 2


def _resolve_padding(padding: Padding, in_size: int, kernel: int, stride: int,
                     dilation: int) -> tuple[int, int]:
  if isinstance(padding, str):
    p = padding.upper()
    if p == 'VALID':
      return 0, 0
    if p == 'SAME':
      return same_padding(in_size, kernel, stride, dilation)
    raise ValueError(f"padding string must be 'SAME' or 'VALID', got {padding!r}")
  if isinstance(padding, int):
    return padding, padding
  lo, hi = padding
  return lo, hi


def conv_output_size(in_size: int, kernel: int, stride: int = 1, padding: Padding = 0,
                     dilation: int = 1) -> int:
  """floor((W + 2P − d(K − 1) − 1)/s) + 1 (C4); = (W − K + 2P)/s + 1 when d = 1 and s divides.

  `padding` is an int P (both sides), a (low, high) pair, or 'SAME' (→ ceil(W/s)) / 'VALID'.
  Pooling windows obey the same formula (C6).
  """
  lo, hi = _resolve_padding(padding, in_size, kernel, stride, dilation)
  span = in_size + lo + hi - effective_kernel(kernel, dilation)
  if span < 0:
    raise ValueError(f'kernel {kernel} (dilation {dilation}) larger than padded input {in_size + lo + hi}')
  return span // stride + 1


def transposed_conv_output_size(in_size: int, kernel: int, stride: int = 1, padding: int = 0,
                                output_padding: int = 0, dilation: int = 1) -> int:
  """(W − 1)s − 2P + d(K − 1) + output_padding + 1 (PyTorch's ConvTranspose convention).

  It inverts conv_output_size whenever s divides W + 2P − d(K − 1) − 1. Flax's ConvTranspose
  with padding='VALID' gives (W − 1)s + K (P = 0), with 'SAME' gives W·s.
  """
  return (in_size - 1) * stride - 2 * padding + effective_kernel(kernel, dilation) + output_padding


# --------------------------------------------------------------------------------------------
# Receptive field (C7, C18)
# --------------------------------------------------------------------------------------------

def receptive_field(layers: Sequence[Sequence[int]]) -> int:
  """Receptive field of a stack of (kernel, stride[, dilation]) layers, input to last output.

  r = 1 + Σ_l (K_l − 1)·d_l·Π_{j<l} s_j (C7): three 3×3 convs at stride 1 see 7×7 (C7, C18).
  """
  r, jump = 1, 1
  for layer in layers:
    k, s, *rest = layer
    d = rest[0] if rest else 1
    r += (k - 1) * d * jump
    jump *= s
  return r


def measured_receptive_field(layers: Sequence[Sequence[int]], in_size: int = 64) -> tuple[int, int]:
  """(height, width) of the input region that one central output pixel depends on, measured.

  Builds the (kernel, stride[, dilation]) stack from lax convolutions with all-ones kernels and
  returns the extent of the nonzero gradient of that pixel w.r.t. a 2-D input (C7).
  """
  def forward(x):
    for layer in layers:
      k, s, *rest = layer
      d = rest[0] if rest else 1
      x = jax.lax.conv_general_dilated(x, jnp.ones((1, 1, k, k)), (s, s), 'VALID',
                                       rhs_dilation=(d, d))
    return x

  x = jnp.ones((1, 1, in_size, in_size))
  out = jax.eval_shape(forward, x).shape
  grad = jax.grad(lambda v: forward(v)[0, 0, out[2] // 2, out[3] // 2])(x)[0, 0]
  rows, cols = np.nonzero(np.asarray(grad))
  return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


# --------------------------------------------------------------------------------------------
# Parameter counts (C1, C2, C8, C18)
# --------------------------------------------------------------------------------------------

def conv_params(c_in: int, c_out: int, kernel: int | Sequence[int], bias: bool = True,
                groups: int = 1) -> int:
  """Weights of a conv layer: Π kernel · C_in/groups · C_out (+ C_out biases) (C2)."""
  if c_in % groups or c_out % groups:
    raise ValueError(f'groups={groups} must divide c_in={c_in} and c_out={c_out}')
  return math.prod(_pair(kernel)) * (c_in // groups) * c_out + (c_out if bias else 0)


def dense_params(n_in: int, n_out: int, bias: bool = True) -> int:
  """Weights of a fully connected layer: n_in·n_out (+ n_out) (C1: 256·256·1000 = 65,536,000)."""
  return n_in * n_out + (n_out if bias else 0)


def conv1d_output_size(d_in: int, kernel: int) -> int:
  """C2: y_i = Σ_{m=1..K} x_{i+m−1} w_m is defined for D_out = D_in − K + 1 positions."""
  return d_in - kernel + 1


def fc1d_params(d_in: int, d_out: int) -> int:
  """C2: a fully connected layer D_in → D_out has D_in·D_out + D_out parameters."""
  return dense_params(d_in, d_out, bias=True)


def conv1d_params(kernel: int, c_in: int = 1, c_out: int = 1, bias: bool = True) -> int:
  """C2: a 1-D conv layer has K + 1 parameters; with channels C_in·C_out·K + C_out."""
  return conv_params(c_in, c_out, (kernel,), bias=bias)


def count_params(tree: Any) -> int:
  """Number of scalars in a pytree of arrays or jax.ShapeDtypeStruct (e.g. variables['params'])."""
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


# --------------------------------------------------------------------------------------------
# A convolution is a matrix product (C9)
# --------------------------------------------------------------------------------------------

def conv_as_matrix(kernel: np.ndarray, in_shape: Sequence[int], stride: int = 1) -> np.ndarray:
  """The matrix W with W @ x.ravel() == VALID cross-correlation(x, kernel).ravel() (C3, C9).

  * kernel (kh, kw), in_shape (H, W): W has shape (Ho·Wo, H·W) — C9's W1 ∈ R^{25×49} for 7×7, 3×3.
  * kernel (kh, kw, C_in, C_out) (flax's HWIO), in_shape (H, W, C_in): W has shape
    (Ho·Wo·C_out, H·W·C_in), rows and columns in row-major HWC order.
  """
  kernel = np.asarray(kernel)
  single = kernel.ndim == 2
  if single:
    kernel = kernel[:, :, None, None]
    in_shape = (*in_shape, 1)
  kh, kw, c_in, c_out = kernel.shape
  h, w, c = in_shape
  if c != c_in:
    raise ValueError(f'input has {c} channels, kernel expects {c_in}')
  ho, wo = conv_output_size(h, kh, stride), conv_output_size(w, kw, stride)
  mat = np.zeros((ho, wo, c_out, h, w, c_in), dtype=kernel.dtype)
  for i in range(ho):
    for j in range(wo):
      # output (i, j, o) = Σ_{a,b,c} x[i·s + a, j·s + b, c] · k[a, b, c, o]
      mat[i, j, :, i * stride:i * stride + kh, j * stride:j * stride + kw, :] = (
          kernel.transpose(3, 0, 1, 2))
  return mat.reshape(ho * wo * c_out, h * w * c_in)


# --------------------------------------------------------------------------------------------
# Multiply-accumulate count measured from the layers a model actually calls
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerMACs:
  path: str  # module path, e.g. 'stage1_block2/conv1'
  kind: str  # 'Conv', 'ConvTranspose', 'Dense', ...
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  macs: int


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Multiply-accumulates per image. torchvision's "GFLOPS" column counts the same thing (MACs)."""
  macs: int
  layers: tuple[LayerMACs, ...]

  @property
  def gmacs(self) -> float:
    return self.macs / 1e9


def _layer_macs(module: nn.Module, x: Any, y: Any) -> int | None:
  """MACs of one call on a batch-1 input, or None for modules that are not counted."""
  if isinstance(module, (nn.Conv, nn.ConvLocal)):
    groups = getattr(module, 'feature_group_count', 1)
    return int(y.size) * math.prod(_pair(module.kernel_size)) * (x.shape[-1] // groups)
  if isinstance(module, nn.ConvTranspose):
    # Scatter form: each input pixel meets the whole kernel. Exact when the output is not
    # cropped by padding (e.g. U-Net's 2×2 stride-2 up-convolutions).
    return int(x.size) * math.prod(_pair(module.kernel_size)) * module.features
  if isinstance(module, nn.Dense):
    return int(y.size) * x.shape[-1]
  return None


def count_flops(model: nn.Module, input_shape: Sequence[int], variables: Any = None, *,
                apply_kwargs: dict[str, Any] | None = None,
                dtype: Any = jnp.float32) -> FlopCount:
  """MACs per image of `model` on one (H, W, C) input, read from its nn.Conv/ConvTranspose/Dense calls.

  Conv: output elements × kh·kw·C_in/groups; Dense: output elements × n_in; ConvTranspose:
  input elements × kh·kw·C_out. Element-wise ops, pooling and normalisation are not counted
  (nor are they in torchvision's GFLOPS, which are MACs despite the name). The forward pass runs
  abstractly (jax.eval_shape) with batch 1 and `apply_kwargs` (default train=False), so no
  memory is allocated; `variables` (arrays or ShapeDtypeStructs) are built the same way if None.
  Layers inside lifted loops (nn.scan, nn.while_loop) are traced once, so counted once.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
  kwargs = {'train': False} if apply_kwargs is None else dict(apply_kwargs)
  if variables is None:
    rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
    variables = jax.eval_shape(lambda v: model.init(rngs, v, **kwargs), x)
  records: list[LayerMACs] = []
  active: set[int] = set()  # guards against counting a module twice when its __call__ re-enters

  def interceptor(next_fun, args, kw, context):
    module = context.module
    if context.method_name != '__call__' or id(module) in active:
      return next_fun(*args, **kw)
    active.add(id(module))
    try:
      out = next_fun(*args, **kw)
    finally:
      active.discard(id(module))
    inputs = args[0] if args else kw.get('inputs')
    macs = _layer_macs(module, inputs, out) if hasattr(inputs, 'shape') else None
    if macs is not None:
      records.append(LayerMACs('/'.join(module.scope.path) if module.scope else type(module).__name__,
                               type(module).__name__, tuple(inputs.shape), tuple(out.shape), macs))
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, inp: model.apply(v, inp, **kwargs), variables, x)
  return FlopCount(sum(r.macs for r in records), tuple(records))
