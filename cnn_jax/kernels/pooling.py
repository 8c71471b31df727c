"""The CPU layer set's max pooling: `flax.linen.max_pool`'s forward with a backward XLA runs fast.

`nn.max_pool` is `lax.reduce_window`; its gradient is XLA's `select_and_scatter`, which XLA's
CPU backend runs far slower than the forward pass (docs/cpu.md). `max_pool` keeps the same forward and
computes the same gradient, the first maximum of each window in row-major order as
select_and_scatter does (ties included), from equality masks over `stride x stride` phases of
the input: slices, selects and plain pads, which XLA fuses into a few loops.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def _explicit_padding(shape, window, strides, padding: Padding) -> tuple[tuple[int, int], ...]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(shape, window, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def max_pool(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = 'VALID') -> jax.Array:
  """Drop-in for `flax.linen.max_pool` on NHWC (or NH...C) inputs: same values, same gradient."""
  window = tuple(int(k) for k in window_shape)
  strides = tuple(int(s) for s in strides) if strides is not None else (1,) * len(window)
  if len(window) != x.ndim - 2 or len(strides) != len(window):
    raise ValueError(f'max_pool: window {window} and strides {strides} must have one entry per '
                     f'spatial axis of an input of shape {x.shape} (batch first, channels last).')
  pads = _explicit_padding(x.shape[1:-1], window, strides, padding)
  return _max_pool(x, window, strides, pads)


def _forward(x, window, strides, pads):
  return nn.max_pool(x, window, strides=strides, padding=pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _forward(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  out = _forward(x, window, strides, pads)
  return out, (x, out)


def _max_pool_bwd(window, strides, pads, residuals, g):
  x, out = residuals
  out_sizes = out.shape[1:-1]
  # Pad with -inf to whole blocks of `stride`: blocks[a] covers rows a*s .. a*s + s - 1, and
  # window offset i of output a sits at block a + i // s, phase i % s.
  blocks = [o - 1 + -(-k // s) for o, k, s in zip(out_sizes, window, strides)]
  full = [b * s for b, s in zip(blocks, strides)]
  cfg = [(0, 0, 0)] + [(lo, f - n - lo, 0) for (lo, _), f, n in zip(pads, full, x.shape[1:-1])]
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), cfg + [(0, 0, 0)])
  split = (x.shape[0],) + sum(((b, s) for b, s in zip(blocks, strides)), ()) + (x.shape[-1],)
  xb = xp.reshape(split)

  phases = {}
  claimed = jnp.zeros(out.shape, bool)
  for offset in _row_major(window):
    q = [i // s for i, s in zip(offset, strides)]
    r = tuple(i % s for i, s in zip(offset, strides))
    index = (slice(None),) + sum(((slice(qi, qi + o), ri) for qi, o, ri in zip(q, out_sizes, r)),
                                 ()) + (slice(None),)
    hit = (xb[index] == out) & ~claimed
    claimed = claimed | hit
    contrib = jnp.where(hit, g, jnp.zeros((), g.dtype))
    block_pad = [(0, 0, 0)] + [(qi, b - o - qi, 0) for qi, b, o in zip(q, blocks, out_sizes)]
    contrib = lax.pad(contrib, jnp.zeros((), g.dtype), block_pad + [(0, 0, 0)])
    phases[r] = contrib if r not in phases else phases[r] + contrib

  zeros = jnp.zeros(claimed.shape[:1] + tuple(blocks) + claimed.shape[-1:], g.dtype)
  grid = jnp.stack([phases.get(r, zeros) for r in _row_major(strides)], axis=-1)
  # (N, b1.., C, s1*s2..) -> (N, b1, s1, b2, s2, .., C)
  grid = grid.reshape(grid.shape[:-1] + tuple(strides))
  nd = len(blocks)
  perm = [0] + sum(([1 + d, nd + 2 + d] for d in range(nd)), []) + [nd + 1]
  gx = grid.transpose(perm).reshape((x.shape[0],) + tuple(full) + (x.shape[-1],))
  undo = [(0, 0, 0)] + [(-lo, -(f - n - lo), 0) for (lo, _), f, n in
                        zip(pads, full, x.shape[1:-1])] + [(0, 0, 0)]
  return (lax.pad(gx, jnp.zeros((), g.dtype), undo),)


def _row_major(sizes):
  if not sizes:
    yield ()
    return
  for i in range(sizes[0]):
    for rest in _row_major(sizes[1:]):
      yield (i,) + rest


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
