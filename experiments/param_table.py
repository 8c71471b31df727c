"""Parameters and MACs of every registered model, and the arithmetic claims C1, C4, C5, C7, C8, C18.

    python -m experiments.param_table --out=reports/param_table

Writes report.md (measured next to lecture/published values) and param_table.json (raw numbers).
Every number is counted from real flax modules traced abstractly (jax.eval_shape): nothing is
allocated, so VGG-19 costs nothing. Runtime: about a minute on a 2-core CPU for the whole zoo.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import conv_arithmetic as ca
from cnn_jax import models, runtime

from cnn_jax.models import published
from cnn_jax.models.layer_set import max_pool

PUBLISHED_PARAMS = published.PUBLISHED_PARAMS
PUBLISHED_GFLOPS = published.PUBLISHED_GFLOPS
PAPER_PARAMS_APPROX = getattr(published, 'PAPER_PARAMS_APPROX', {})

# What the lecture notes say about whole-model sizes (CLAIMS.md): model -> (claim, words, value).
LECTURE_PARAMS = {
    'lenet5': ('C14', 'about 60K', 60e3),
    'alexnet': ('C16', 'about 60M', 60e6),
    'vgg16': ('C18', '138M', 138e6),
    'googlenet': ('C19', '6.8M', 6.8e6),
    'resnet152': ('C20', 'ResNet-152: 60M', 60e6),
}

COMMAND = 'python -m experiments.param_table --out=reports/param_table'


# ----------------------------------------------------------------------------------------------
# Models of the claims, as real flax modules
# ----------------------------------------------------------------------------------------------

class Exercise10_1(nn.Module):
  """C8: 13×13 → conv 3 filters 4×4 (no bias) → ReLU → max 2×2/2 → FC 4 (no bias) → ReLU.

  `conv_as_dense` builds the all-FC twin: the conv layer is replaced by a dense 169 → 10·10·3
  layer with the same output size. `pool=False` also drops the pooling (FC 300 → 4).
  """
  conv_as_dense: bool = False
  pool: bool = True
  act: Callable = nn.relu

  @nn.compact
  def __call__(self, x):  # x: (N, 13, 13, 1)
    n, h, w, _ = x.shape
    o = ca.conv_output_size(h, 4)
    if self.conv_as_dense:
      x = nn.Dense(o * o * 3, use_bias=False, name='fc1')(x.reshape(n, -1)).reshape(n, o, o, 3)
    else:
      x = nn.Conv(3, (4, 4), padding='VALID', use_bias=False, name='conv')(x)
    x = self.act(x)
    if self.pool:
      x = max_pool(x, (2, 2), strides=(2, 2))
    return self.act(nn.Dense(4, use_bias=False, name='fc')(x.reshape(n, -1)))


def abstract_params(module: nn.Module, input_shape: Sequence[int], **kwargs) -> Any:
  """Shapes of module.init(...) on a batch-1 input, without allocating."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  return jax.eval_shape(lambda v: module.init(rngs, v, **kwargs), x)


def module_params(module: nn.Module, input_shape: Sequence[int], **kwargs) -> int:
  return ca.count_params(abstract_params(module, input_shape, **kwargs).get('params', {}))


def exercise_counts(conv_as_dense: bool = False, pool: bool = True) -> dict[str, int]:
  """Weights and ReLU evaluations (per image) of Exercise10_1, counted from the module."""
  relus = []

  def counting_relu(x):
    relus.append(x.size)  # batch 1, so elements of one image
    return nn.relu(x)

  model = Exercise10_1(conv_as_dense=conv_as_dense, pool=pool, act=counting_relu)
  variables = abstract_params(model, (13, 13, 1))
  per_layer = {k: ca.count_params(v) for k, v in variables['params'].items()}
  relus.clear()  # init traced the forward pass once already
  jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((1, 13, 13, 1), jnp.float32))
  return {'weights': ca.count_params(variables['params']), 'relus': sum(relus), **per_layer}


# ----------------------------------------------------------------------------------------------
# The zoo
# ----------------------------------------------------------------------------------------------

def classes_for(name: str, input_shape: Sequence[int]) -> tuple[int, str]:
  """Output classes of the canonical set-up and why: 1000 ImageNet, 10 CIFAR/MNIST, 2 U-Net."""
  if name.startswith('unet'):
    return 2, 'U-Net paper: 2 classes (cell / background)'
  if input_shape[0] >= 200:
    return 1000, 'ImageNet'
  return 10, 'CIFAR-10' if input_shape[-1] == 3 else 'MNIST'


def model_row(name: str) -> dict[str, Any]:
  """One table row; a model that raises gets its error recorded instead."""
  row: dict[str, Any] = {'model': name}
  try:
    shape = models.input_shape(name)
    num_classes, why = classes_for(name, shape)
    row.update(input_shape=list(shape), num_classes=num_classes, classes_note=why)
    model = models.create(name, num_classes=num_classes)
    t0 = time.perf_counter()
    variables = abstract_params(model, shape, train=False)
    row['params'] = ca.count_params(variables.get('params', {}))
    row['batch_stats'] = ca.count_params(variables.get('batch_stats', {}))
    flops = ca.count_flops(model, shape, variables)
    row['macs'] = flops.macs
    row['counted_layers'] = len(flops.layers)
    row['seconds'] = round(time.perf_counter() - t0, 2)
  except Exception as e:  # noqa: BLE001 - the table records the failure
    row['error'] = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
    row['traceback'] = traceback.format_exc(limit=4)
  if name in PUBLISHED_PARAMS:
    count, source = PUBLISHED_PARAMS[name]
    row.update(published_params=count, published_source=source)
    if 'params' in row:
      row['diff'] = row['params'] - count
  if name in PUBLISHED_GFLOPS:
    row['torchvision_gflops'] = PUBLISHED_GFLOPS[name]
  if name in PAPER_PARAMS_APPROX:
    row['paper_approx'], row['paper_approx_source'] = PAPER_PARAMS_APPROX[name]
  if name in LECTURE_PARAMS:
    row['lecture_claim'], row['lecture_words'], row['lecture_value'] = LECTURE_PARAMS[name]
  return row


def param_table(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
  return [model_row(n) for n in (models.names() if names is None else names)]


# ----------------------------------------------------------------------------------------------
# The claims
# ----------------------------------------------------------------------------------------------

def vgg_c18(channels: Sequence[int] = (64, 128, 256, 512)) -> list[dict[str, Any]]:
  """C18: one 7×7 conv c→c against three stacked 3×3 convs, no bias, from real nn.Conv modules."""
  rows = []
  for c in channels:
    one = module_params(nn.Conv(c, (7, 7), use_bias=False), (16, 16, c))
    stack = nn.Sequential([nn.Conv(c, (3, 3), use_bias=False) for _ in range(3)])
    three = module_params(stack, (16, 16, c))
    rows.append({'c': c, 'one_7x7': one, 'three_3x3': three, 'one_7x7_over_c2': one / c**2,
                 'three_3x3_over_c2': three / c**2, 'saving': 1 - three / one,
                 'rf_one_7x7': ca.measured_receptive_field([(7, 1)])[0],
                 'rf_three_3x3': ca.measured_receptive_field([(3, 1)] * 3)[0]})
  return rows


def claim_c1() -> dict[str, Any]:
  """C1: a 256×256 grey image fully connected to 1000 outputs, from a real nn.Dense (abstract)."""
  return {'no_bias': module_params(nn.Dense(1000, use_bias=False), (256 * 256,)),
          'with_bias': module_params(nn.Dense(1000), (256 * 256,)),
          'formula': ca.dense_params(256 * 256, 1000, bias=False)}


def claim_c2() -> dict[str, Any]:
  """C2: 1-D conv with K = 4 and D_out = 9, against real nn.Conv/nn.Dense."""
  k, d_out = 4, 9
  d_in = d_out + k - 1
  conv = nn.Conv(1, (k,), padding='VALID')
  out = jax.eval_shape(lambda v, x: conv.apply(v, x), abstract_params(conv, (d_in, 1)),
                       jax.ShapeDtypeStruct((1, d_in, 1), jnp.float32)).shape
  return {'k': k, 'd_in': d_in, 'd_out_measured': out[1], 'd_out_formula': ca.conv1d_output_size(d_in, k),
          'fc_params': module_params(nn.Dense(d_out), (d_in,)), 'fc_formula': ca.fc1d_params(d_in, d_out),
          'conv_params': module_params(conv, (d_in, 1)), 'conv_formula': ca.conv1d_params(k),
          'multi_conv_params': module_params(nn.Conv(5, (k,)), (d_in, 3)),
          'multi_conv_formula': ca.conv1d_params(k, c_in=3, c_out=5)}


def _lax_out(w: int, k: int, s: int = 1, p: Any = 0, d: int = 1) -> int:
  pad = p if isinstance(p, str) else [(p, p)] * 2
  x = jax.ShapeDtypeStruct((1, 1, w, w), jnp.float32)
  kern = jax.ShapeDtypeStruct((1, 1, k, k), jnp.float32)
  return jax.eval_shape(lambda a, b: jax.lax.conv_general_dilated(
      a, b, (s, s), pad, rhs_dilation=(d, d)), x, kern).shape[2]


C5_CASES = [  # Dumoulin & Visin 2016, figures 2.1–2.7, 5.1: (name, W, K, P, s, d, output in the figure)
    ('no padding, no strides', 4, 3, 0, 1, 1, 2), ('arbitrary padding', 5, 4, 2, 1, 1, 6),
    ('half (same) padding', 5, 3, 1, 1, 1, 5), ('full padding', 5, 3, 2, 1, 1, 7),
    ('no padding, strides', 5, 3, 0, 2, 1, 2), ('padding, strides', 5, 3, 1, 2, 1, 3),
    ('padding, strides (odd)', 6, 3, 1, 2, 1, 3), ('dilation', 7, 3, 0, 1, 2, 3)]


def claim_c4_c5() -> dict[str, Any]:
  conv = nn.Conv(6, (5, 5), padding='VALID')
  out = jax.eval_shape(conv.apply, abstract_params(conv, (32, 32, 3)),
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)).shape
  same = [{'k': k, 'lecture_pad': ca.lecture_same_padding(k), 'lecture_out': _lax_out(32, k, p=(k + 1) // 2),
           'correct_pad': ca.same_padding_odd(k), 'correct_out': _lax_out(32, k, p=ca.same_padding_odd(k)),
           'lax_same_out': _lax_out(32, k, p='SAME')} for k in (3, 5, 7)]
  c5 = [{'case': n, 'W': w, 'K': k, 'P': p, 's': s, 'd': d, 'figure': fig,
         'formula': ca.conv_output_size(w, k, s, p, d), 'lax': _lax_out(w, k, s, p, d)}
        for n, w, k, p, s, d, fig in C5_CASES]
  return {'c4_out_shape': list(out[1:]), 'c4_formula': ca.conv_output_size(32, 5), 'same': same, 'c5': c5}


def claim_c8() -> dict[str, Any]:
  return {'cnn': exercise_counts(), 'fc_twin': exercise_counts(conv_as_dense=True),
          'fc_twin_no_pool': exercise_counts(conv_as_dense=True, pool=False)}


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

def machine() -> dict[str, str]:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      models_ = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    cpu = f'{models_[0]} × {len(models_)}' if models_ else cpu
  except OSError:
    pass
  return {'platform': platform.platform(), 'python': platform.python_version(), 'cpu': cpu,
          'jax': jax.__version__, 'flax': flax.__version__, 'backend': jax.default_backend()}


def _macs(v: int) -> str:
  return f'{v / 1e9:.3f} G' if v >= 1e8 else f'{v / 1e6:.3f} M'


def table_markdown(rows: list[dict[str, Any]]) -> str:
  lines = ['| model | input H×W×C | classes | params (ours) | published, exact (source) | ours − published '
           '| paper, rounded (ours − paper) | MACs / image (ours) | torchvision GFLOPS (= GMACs, 224×224) |',
           '|---|---|---|---:|---|---:|---|---:|---:|']
  for r in rows:
    shape = '×'.join(str(v) for v in r['input_shape']) if 'input_shape' in r else '—'
    classes = f"{r['num_classes']} ({r['classes_note']})" if 'num_classes' in r else '—'
    pub = (f"{r['published_params']:,} ({r['published_source']})" if 'published_params' in r else '—')
    paper = '—'
    if 'paper_approx' in r:
      paper = f"{r['paper_approx'] / 1e6:g}M ({r['paper_approx_source']})"
      if 'params' in r:
        paper += f'; {100 * (r["params"] / r["paper_approx"] - 1):+.1f}%'
    if 'error' in r:
      ours, diff, macs = f"**error**: `{r['error']}`", '—', '—'
    else:
      ours, macs = f"{r['params']:,}", _macs(r['macs'])
      diff = '—' if 'diff' not in r else ('0 (exact)' if r['diff'] == 0 else f"**{r['diff']:+,}**")
    lines.append(f"| {r['model']} | {shape} | {classes} | {ours} | {pub} | {diff} | {paper} | {macs} "
                 f"| {r.get('torchvision_gflops', '—')} |")
  return '\n'.join(lines)


def lecture_markdown(rows: list[dict[str, Any]]) -> str:
  lines = ['| claim | model | lecture | measured params | measured / lecture − 1 | verdict |',
           '|---|---|---|---:|---:|---|']
  for r in rows:
    if 'lecture_claim' not in r:
      continue
    if 'params' not in r:
      lines.append(f"| {r['lecture_claim']} | {r['model']} | {r['lecture_words']} | error | — | — |")
      continue
    gap = r['params'] / r['lecture_value'] - 1
    verdict = 'consistent (within 5%)' if abs(gap) <= 0.05 else 'off by more than 5%'
    lines.append(f"| {r['lecture_claim']} | {r['model']} | {r['lecture_words']} | {r['params']:,} "
                 f"| {100 * gap:+.1f}% | {verdict} |")
  return '\n'.join(lines)


def render(data: dict[str, Any]) -> str:
  """report.md: the models' table, the lecture's sizes and C18, then claims C1, C2, C4, C5, C8."""
  out = _models_section(data) + _c18_section(data) + _claims_section(data)
  return '\n'.join(out) + '\n'


def _models_section(data: dict[str, Any]) -> list[str]:
  m = data['machine']
  mismatched = [r['model'] for r in data['models'] if r.get('diff') not in (None, 0)]
  errors = [r['model'] for r in data['models'] if 'error' in r]
  out = [
      '# Parameter and MAC counts of the model zoo; conv-arithmetic claims',
      '',
      f"Produced by `{data['command']}` on {data['date']} — {m['platform']}, CPU {m['cpu']}, "
      f"Python {m['python']}, jax {m['jax']}, flax {m['flax']} (backend {m['backend']}); "
      f"{data['seconds']:.1f} s.",
      '',
      'Every number below is counted by code from real flax modules (shapes traced with `jax.eval_shape`, '
      'nothing allocated). Parameters are the `params` collection only (BatchNorm running statistics, '
      'like torchvision buffers, are not parameters). MACs are multiply-accumulates per image at the input '
      'size shown, read from every `nn.Conv`/`nn.ConvTranspose`/`nn.Dense` call by '
      '`cnn_jax.conv_arithmetic.count_flops`; torchvision\'s "GFLOPS" column also counts MACs, measured at '
      '224×224 for ImageNet models.',
      '',
      '## Models',
      '',
      table_markdown(data['models']),
      '',
      (f"Counts that differ from the published figure: {', '.join(mismatched)}." if mismatched
       else 'Every model with a published count matches it exactly.'),
  ]
  if errors:
    out += ['', f"Models that raised (error recorded above): {', '.join(errors)}."]
  return out


def _c18_section(data: dict[str, Any]) -> list[str]:
  out = [
      '',
      '## Whole-model sizes the lecture quotes',
      '',
      lecture_markdown(data['models']),
      '',
      '## C18 — three 3×3 convs against one 7×7 (VGG)',
      '',
      'Lecture: same receptive field, 27c² instead of 49c² weights, "45% fewer". Measured from real `nn.Conv` '
      'modules (c → c, no bias):',
      '',
      '| c | one 7×7 | three 3×3 | 7×7 / c² | 3×3 stack / c² | saving | receptive field 7×7 | receptive field 3×(3×3) |',
      '|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for r in data['c18']:
    out.append(f"| {r['c']} | {r['one_7x7']:,} | {r['three_3x3']:,} | {r['one_7x7_over_c2']:g} "
               f"| {r['three_3x3_over_c2']:g} | {100 * r['saving']:.1f}% | {r['rf_one_7x7']} | {r['rf_three_3x3']} |")
  return out


def _claims_section(data: dict[str, Any]) -> list[str]:
  c1, c2, c45, c8 = data['c1'], data['c2'], data['c4_c5'], data['c8']
  out = [
      '',
      'Receptive fields are measured as the extent of the nonzero gradient of one output pixel with respect '
      f"to the input; the formula r = 1 + Σ(K−1)·Π s gives {ca.receptive_field([(3, 1)] * 3)} (C7).",
      '',
      '## Claims C1, C2, C4, C5, C8',
      '',
      '| claim | quantity | lecture | measured (real modules) | verdict |',
      '|---|---|---|---|---|',
      f"| C1 | weights of a 256×256×1 → 1000 dense layer | \"more than 65 million\" | {c1['no_bias']:,} "
      f"(+1,000 biases: {c1['with_bias']:,}) | {'correct' if c1['no_bias'] > 65_000_000 else 'WRONG'} |",
      f"| C2 | 1-D conv K={c2['k']}, D_out=9 ⇒ D_in | D_in − K + 1 = D_out | D_in = {c2['d_in']}, nn.Conv gives "
      f"D_out = {c2['d_out_measured']} | {'correct' if c2['d_out_measured'] == 9 else 'WRONG'} |",
      f"| C2 | FC {c2['d_in']}→9 params | D_in·D_out + D_out = {c2['fc_formula']} | {c2['fc_params']} | "
      f"{'correct' if c2['fc_params'] == c2['fc_formula'] else 'WRONG'} |",
      f"| C2 | conv params | K + 1 = {c2['conv_formula']}; C_in·C_out·K + C_out (3→5) = {c2['multi_conv_formula']} "
      f"| {c2['conv_params']}; {c2['multi_conv_params']} | "
      f"{'correct' if (c2['conv_params'], c2['multi_conv_params']) == (c2['conv_formula'], c2['multi_conv_formula']) else 'WRONG'} |",
      f"| C4 | 32×32×3, six 5×5×3 filters | 28×28×6 | {'×'.join(map(str, c45['c4_out_shape']))} | "
      f"{'correct' if c45['c4_out_shape'] == [28, 28, 6] else 'WRONG'} |",
  ]
  for s in c45['same']:
    out.append(
        f"| C4 | 'same' padding, K={s['k']}, W=32 | (K+1)/2 = {s['lecture_pad']:g} → output {s['lecture_out']} "
        f"| (K−1)/2 = {s['correct_pad']} → output {s['correct_out']} (lax 'SAME': {s['lax_same_out']}) "
        f"| {'lecture WRONG: (K+1)/2 grows the map' if s['lecture_out'] != 32 else 'correct'} |")
  for c in c45['c5']:
    ok = c['figure'] == c['formula'] == c['lax']
    out.append(f"| C5 | {c['case']}: W={c['W']} K={c['K']} P={c['P']} s={c['s']} d={c['d']} | {c['figure']} (figure) "
               f"| {c['lax']} (lax conv); formula {c['formula']} | {'correct' if ok else 'WRONG'} |")
  cnn, twin, twin_np = c8['cnn'], c8['fc_twin'], c8['fc_twin_no_pool']
  out += [
      f"| C8 | conv parameters | 48 | {cnn['conv']} | {'correct' if cnn['conv'] == 48 else 'WRONG'} |",
      f"| C8 | ReLU evaluations per forward pass | 304 | {cnn['relus']} | {'correct' if cnn['relus'] == 304 else 'WRONG'} |",
      f"| C8 | weights of the network | 348 | {cnn['weights']} (conv {cnn['conv']} + FC {cnn['fc']}) "
      f"| {'correct' if cnn['weights'] == 348 else 'WRONG'} |",
      f"| C8 | all-FC twin | \"≈50k\" | FC 169→300 replacing the conv: {twin['fc1']:,}; whole twin (pooling kept, "
      f"FC 75→4): {twin['weights']:,}; if pooling were dropped too (FC 300→4): {twin_np['weights']:,} "
      f"| {'correct' if abs(twin['fc1'] / 50_000 - 1) < 0.05 else 'WRONG'}: the ≈50k is the {twin['fc1']:,}-weight "
      f"dense layer (169·300, no bias) that replaces the {cnn['conv']}-weight conv; the whole twin has "
      f"{twin['weights'] / cnn['weights']:.0f}× the CNN's {cnn['weights']} weights |",
      '',
      'Where the lecture is wrong: note 000\'s \'same\' padding (K+1)/2 (C4, rows above; correct: (K−1)/2 for '
      'odd K at stride 1). C20\'s "ResNet-152: 60M" is checked in the lecture table above; its weight decay 1e-5 '
      '(paper: 1e-4) is a training claim, not in scope here.',
      '',
      'Raw numbers: `param_table.json` (per-model trace time in `seconds`, per-layer counts via '
      '`count_flops(...).layers`).',
  ]
  return out


def run(out_dir: str, names: Sequence[str] | None = None, command: str = COMMAND) -> dict[str, Any]:
  """Computes everything, writes report.md and param_table.json into out_dir, returns the data."""
  t0 = time.perf_counter()
  data = {'command': command, 'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
          'machine': machine(), 'models': param_table(names), 'c18': vgg_c18(), 'c1': claim_c1(),
          'c2': claim_c2(), 'c4_c5': claim_c4_c5(), 'c8': claim_c8()}
  data['seconds'] = time.perf_counter() - t0
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'param_table.json'), 'w') as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out_dir, 'report.md'), 'w') as f:
    f.write(render(data))
  return data


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='reports/param_table', help='output folder')
  parser.add_argument('--models', default='', help='comma-separated subset of models (default: all)')
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(',') if n] or None
  if names:
    unknown = sorted(set(names) - set(models.names()))
    if unknown:
      parser.error(f"unknown model(s) {unknown}; known: {', '.join(models.names())}")
  cmd = 'python -m experiments.param_table ' + ' '.join(sys.argv[1:] if argv is None else argv)
  data = run(args.out, names, command=cmd.strip())
  print(table_markdown(data['models']))
  print(f"wrote {args.out}/report.md and param_table.json in {data['seconds']:.1f} s")


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
