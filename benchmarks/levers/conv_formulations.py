"""2. Convolution kernel-gradient formulations, one layer at a time (batch 128, 3x3, the shapes of
ResNet-20): XLA's own (batch-contracted convolution with transposes), nine dots over shifted
views, and one im2col dot; each checked against XLA's value; with the project's XLA settings
and with XLA's defaults, each in a child process."""
from __future__ import annotations

from benchmarks import harness
from benchmarks.levers import common

LAYERS = ((32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (8, 64, 64, 1))  # (H, Cin, Cout, s)
VARIANTS = (('project defaults (YNN)', {}), ('XLA defaults', {'CNN_JAX_XLA_DEFAULTS': '0'}))


def _views(x, s, ho, wo):
  """The nine shifted (and strided) views of `x` padded by one that a 3x3 kernel's taps see."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  (after runtime.start())
  from jax import lax  # pylint: disable=g-import-not-at-top
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + s * (ho - 1) + 1, j + s * (wo - 1) + 1,
                                       xp.shape[3]), (1, s, s, 1))
          for i in range(3) for j in range(3)]


def _dots(x, g, s):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  _, ho, wo, d = g.shape
  g2 = g.reshape(-1, d)
  return jnp.stack([lax.dot_general(v.reshape(-1, v.shape[-1]), g2, (((0,), (0,)), ((), ())))
                    for v in _views(x, s, ho, wo)]).reshape(3, 3, x.shape[-1], d)


def _im2col(x, g, s):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  _, ho, wo, d = g.shape
  p = jnp.concatenate(_views(x, s, ho, wo), axis=-1)
  return lax.dot_general(p.reshape(-1, p.shape[-1]), g.reshape(-1, d),
                         (((0,), (0,)), ((), ()))).reshape(3, 3, x.shape[-1], d)


def _layer_row(key, hw, ci, co, s) -> list[str]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(key, (128, hw, hw, ci))
  w = jax.random.normal(key, (3, 3, ci, co)) * 0.1
  conv = lambda x, w: lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)),
                                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  g = jax.random.normal(key, conv(x, w).shape)
  gx = lambda w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]
  gw = jax.jit(lambda x, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
  ref = gw(x, g)
  err = lambda a: float(jnp.max(jnp.abs(a - ref)) / jnp.max(jnp.abs(ref)))
  f_dots, f_i2c = jax.jit(lambda x, g: _dots(x, g, s)), jax.jit(lambda x, g: _im2col(x, g, s))
  ms = common.ms_per_call
  return [f'{hw}x{hw}x{ci} -> {co}, stride {s}', f'{ms(conv, x, w):.1f}', f'{ms(gx, w, g):.1f}',
          f'{ms(gw, x, g):.1f}', f'{ms(f_dots, x, g):.1f} ({err(f_dots(x, g)):.0e})',
          f'{ms(f_i2c, x, g):.1f} ({err(f_i2c(x, g)):.0e})']


def child() -> list[list[str]]:
  """In the child: the table's rows, one per layer of LAYERS."""
  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.key(0)
  return [_layer_row(key, *layer) for layer in LAYERS]


def measure(args) -> dict:
  del args
  return {'layers': {label: harness.call(harness.Child.of(child, env=env))
                     for label, env in VARIANTS}}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  layer_tables = '\n\n'.join(
      f'**{label}**\n\n' + report.markdown_table(
          ['layer', 'forward', 'input gradient', 'kernel gradient (XLA)',
           'kernel gradient: 9 dots (rel. err.)', 'kernel gradient: im2col dot (rel. err.)'],
          rows)
      for label, rows in results['layers'].items())
  return f"""## 2. Convolution formulations, one layer, batch 128, milliseconds

{layer_tables}

Reading: under the YNN fusions XLA's own kernel gradient is the fastest formulation measured, so
no custom VJP is kept; without them the shifted-view dots beat XLA's kernel gradient on the
largest layer, but YNN's gain on the whole step is larger.
"""
