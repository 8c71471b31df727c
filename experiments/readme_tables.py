"""Regenerates the result tables in README.md from the committed reports (never typed by hand).

    python -m experiments.readme_tables             # README.md's tables
    python -m experiments.readme_tables --recheck   # first, each report's stale checks entries
                                                    # and its machine and load sentences

Each table sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers. The headlines and
"checks hold" cells of the LeNet-5 and experiments tables are computed again from each report's
committed files by its experiment's `recompute` (`recompute` here), never read from a stored
verdict; `mismatches` says where the committed results.json, report.md or README disagree with
that, and `--recheck` rewrites a results.json's 'checks'/'facts'/'all_checks_hold' and a
report.md's claim-checks section from it, and each report's machine and load sentence from its
runs' own records (`with_run_facts`; no measured number changes).
"""
from __future__ import annotations

import functools
import importlib
import json
import math
import pathlib
import re
import sys

from cnn_jax import models
from cnn_jax.models import published
from cnn_jax.report import markdown_table
from experiments import report_parts, run_records

ROOT = pathlib.Path(__file__).resolve().parents[1]


def seeds_cell(seeds: dict) -> str:
  """'99.06% ± 0.10% (5 seeds)' from {'mean', 'std', 'n'} over seeds; '—' with none."""
  if not seeds['n']:
    return '—'
  return (f"{seeds['mean']:.2%}" + ('' if math.isnan(seeds['std']) else f" ± {seeds['std']:.2%}")
          + f" ({seeds['n']} seeds)")


def lenet5_table() -> str:
  r = json.loads((ROOT / 'reports/lenet5_mnist/results.json').read_text())
  got = recompute('lenet5_mnist').figures
  return markdown_table(
      ['experiment', 'claims', 'test accuracy', 'over seeds', 'lecture', 'best epoch', 'wall time',
       'train images/s', 'hardware', 'command'],
      [[f"[{r['name']}](reports/lenet5_mnist/report.md)", 'C13-C15', f"{got['test_accuracy']:.2%}",
        seeds_cell(got['seeds']), 'about 99%', f"{r['best_epoch']} of {r['epochs']}",
        f"{r['wall_time_s']:.0f} s",
        f"{r['train_images_per_s']:,.0f}",
        f"{r['device_count']} x {r['device_kind']}, host {r.get('host_cpu', '?')}",
        f"`{r['command']}`"]])


# The lecture-claim experiments: name -> (claims, what it shows, the command that makes its report).
EXPERIMENTS = {
    'degradation_cpu': ('C20, C21', 'plain vs residual CIFAR nets, 20 and 56 layers (CPU protocol)',
                        'python -m experiments.degradation --preset=cpu '
                        '--report_dir=reports/degradation_cpu'),
    'degradation_quarter': ('C20, C21', "He et al.'s CIFAR-10 recipe at a quarter of the schedule "
                            '(16,000 iterations): plain/ResNet-20 and -56, ResNet-20 over 3 seeds',
                            'python -m experiments.degradation --preset=quarter '
                            '--models=resnet20,resnet56,plain56,plain20,resnet20_seed1,'
                            'resnet20_seed2 --report_dir=reports/degradation_quarter'),
    'lr_sweep': ('C15', 'one epoch at α = 1, 0.1, 0.01',
                 'python -m experiments.lr_sweep --report_dir=reports/lr_sweep'),
    'gd_variants': ('C13', 'GD vs SGD vs mini-batch SGD, early stopping',
                    'python -m experiments.gd_variants --report_dir=reports/gd_variants'),
    'init_variance': ('C12', 'signal variance through 50 layers per initialisation',
                      'python -m experiments.init_variance --report_dir=reports/init_variance'),
    'normalization': ('C11', 'no norm, BatchNorm, LayerNorm, InstanceNorm, GroupNorm in one '
                      'CIFAR-10 CNN; normalised axes; BN at test time',
                      'python -m experiments.normalization --preset=quick --seeds=2 '
                      '--test_images=1000 --report_dir=reports/normalization'),
    'cnn_vs_fc': ('C25', 'LeNet-5 vs an FC net: parameters, data size, shifts',
                  'python -m experiments.cnn_vs_fc --report_dir=reports/cnn_vs_fc'),
    'unet_segmentation': ('C23', 'U-Net, same and valid padding, on MNIST canvases (CPU protocol)',
                          'python -m experiments.unet_segmentation --preset=cpu '
                          '--report_dir=reports/unet_segmentation'),
    'unet_segmentation_long': ('C23', 'U-Net, same and valid padding, trained until validation '
                               'mIoU plateaus (30 epochs of 64x64 canvases)',
                               'python -m experiments.unet_segmentation --preset=long '
                               '--report_dir=reports/unet_segmentation_long'),
    'transfer': ('C24', 'from scratch, linear probe, last stage, fine-tuning by data size '
                 '(CIFAR-10 0-4 to 5-9, ResNet-8)',
                 'python -m experiments.transfer --preset=quick --report_dir=reports/transfer'),
    'cifar_zoo': ('C16-C19', 'VGG-11/16-BN, GoogLeNet, DenseNet-BC-100, ResNet-18, AlexNet and '
                  'ZFNet on CIFAR-10 (one reduced CPU protocol)',
                  'python -m experiments.cifar_zoo --preset=cpu --report_dir=reports/cifar_zoo'),
    'visualize_filters': ('C26', 'first-layer filters and feature maps (MNIST, CIFAR-10)',
                          'python -m experiments.visualize_filters '
                          '--report_dir=reports/visualize_filters'),
}


def checks_cell(record: dict) -> str:
  """The "checks hold" cell of a report's results.json: its counted checks ('checks') that
  hold; the facts beside them ('facts': from the config or the architecture) never count."""
  checks = record.get('checks', [])
  held = sum(c[-1] == 'yes' for c in checks)
  return f'{held} of {len(checks)}' if checks else '— (no checks: a table)'


def experiment_cells(got: report_parts.Recomputed) -> list[str]:
  """The "headline (measured)" and "checks hold" cells of a recomputed report."""
  return [got.headline, checks_cell(report_parts.checks_record(got.checks))]


def experiments_table() -> str:
  rows = []
  for name, (claims, what, command) in EXPERIMENTS.items():
    path = ROOT / 'reports' / name / 'results.json'
    if not path.exists():
      rows.append([name, claims, what, 'no committed report yet', '—', '—', f'`{command}`'])
      continue
    r = json.loads(path.read_text())
    # A report regenerated from finished runs (--report_only) names the command that trains them
    # and has no experiment wall time of its own to show.
    regenerated = '--report_only' in r['command']
    wall = r.get('train_wall_time_s') or (None if regenerated else r.get('experiment_wall_time_s'))
    rows.append([f'[{name}](reports/{name}/report.md)', claims, what,
                 *experiment_cells(recompute(name)),
                 f'{wall:.0f} s' if wall else '—',
                 f"`{command if regenerated else r['command']}`"])
  return markdown_table(['experiment', 'claims', 'what', 'headline (measured)', 'checks hold',
                         'wall time', 'command'], rows)


# A report made by another experiment's preset -> that experiment (else the report's own name).
EXPERIMENT_OF = {'degradation_cpu': 'degradation', 'degradation_quarter': 'degradation',
                 'unet_segmentation_long': 'unet_segmentation'}


def experiment_of(name: str) -> str:
  return EXPERIMENT_OF.get(name, name)


# ------------------------------------------------- every README row, computed again from its files

# The committed reports (a protocol still training has its README row but no report yet).
REPORTS = tuple(name for name in ('lenet5_mnist', *EXPERIMENTS)
                if (ROOT / 'reports' / name / 'results.json').exists())
# Experiments whose reports' results.json and report.md `--recheck` leaves alone, and why.
KEPT = {'degradation': 'its rows, in its own table, are rewritten with its report by '
                       '`python -m experiments.degradation --report_only` from the same '
                       'committed records'}


@functools.lru_cache(maxsize=None)
def recompute(name: str, root: pathlib.Path = ROOT) -> report_parts.Recomputed:
  """Report `name` computed again from root/reports/<name>/ by its experiment's `recompute`
  (a preset's report by its experiment: `experiment_of`)."""
  experiment = importlib.import_module(f'experiments.{experiment_of(name)}')
  return experiment.recompute(root / 'reports' / name)


def _row_key(name: str):
  """How a stored check row is compared with a recomputed one: whole, but for degradation's,
  whose committed wording predates its current one ("binomial SE"): claim, check and verdict."""
  return (lambda r: (r[0], r[1], r[-1])) if name == 'degradation_cpu' else tuple


def readme_cells(text: str, name: str) -> list[str]:
  """The cells of README `text`'s row for report `name`."""
  start = f'| [{name}](reports/{name}/report.md) |'
  line = next((l for l in text.splitlines() if l.startswith(start)), None)
  return [] if line is None else line.strip('| ').split(' | ')


def _figure_mismatches(name: str, got: report_parts.Recomputed, root: pathlib.Path) -> list[str]:
  """LeNet-5: the README's test accuracy and mean over seeds against the run's results.json and
  seeds.json; other reports: the README's headline and "checks hold" cells."""
  readme = readme_cells((root / 'README.md').read_text(), name)
  if name != 'lenet5_mnist':
    want = experiment_cells(got)
    return [] if readme[3:5] == want else [f'README row {readme[3:5]} != recomputed {want}']
  out, fig = [], got.figures
  stored = run_records.read_json(root / 'reports' / name / 'results.json')['test_accuracy']
  if stored != fig['test_accuracy']:
    out.append(f"results.json test accuracy {stored} != metrics.jsonl's {fig['test_accuracy']}")
  seeds_path = root / 'reports' / name / 'seeds.json'
  seeds = run_records.read_json(seeds_path) if seeds_path.exists() else {'mean': None, 'std': None}
  if seeds['mean'] is not None and ([seeds['mean'], seeds['std']] != [
      fig['seeds']['mean'], None if math.isnan(fig['seeds']['std']) else fig['seeds']['std']]):
    out.append(f'seeds.json mean/std {seeds["mean"]}/{seeds["std"]} != {fig["seeds"]}')
  want = [f"{fig['test_accuracy']:.2%}", seeds_cell(fig['seeds'])]
  return out + ([] if readme[2:4] == want else [f'README row {readme[2:4]} != recomputed {want}'])


def mismatches(name: str, root: pathlib.Path = ROOT) -> list[str]:
  """Where report `name`'s committed files disagree with their recomputation: results.json's
  headline, counted checks, facts and verdict, report.md's claim-checks section (and facts)
  and the README's row. Empty when all agree."""
  got, report_dir = recompute(name, root), root / 'reports' / name
  record = run_records.read_json(report_dir / 'results.json')
  out = _figure_mismatches(name, got, root)
  if record.get('headline', got.headline) != got.headline:
    out.append(f"results.json headline {record['headline']!r} != recomputed {got.headline!r}")
  if 'checks' in record:
    key = _row_key(name)
    for entry, rows in (('checks', got.checks.rows), ('facts', got.checks.facts)):
      if list(map(key, record.get(entry, []))) != list(map(key, rows)):
        out.append(f'results.json {entry!r} differ from the recomputed ones: {rows}')
    if record.get('all_checks_hold', got.checks.all_hold) != got.checks.all_hold:
      out.append(f"results.json all_checks_hold {record['all_checks_hold']} is stale")
  section = report_parts.CHECKS_SECTION.search((report_dir / 'report.md').read_text())
  if experiment_of(name) not in KEPT and (section or got.checks.rows) and (
      section is None or section.group(0) != report_parts.checks_section(got.checks)):
    out.append('report.md claim checks differ from the recomputed ones')
  return out


def recheck(root: pathlib.Path = ROOT, names=REPORTS) -> list[pathlib.Path]:
  """Rewrites, from the recomputation, each report's stale 'all_checks_hold', 'checks' and
  'facts' in results.json (every other entry as it was) and its claim-checks section in
  report.md (the rest as it was), and in every report (KEPT too) the hardware bullet's machine
  and load sentence from the runs' records (`with_run_facts`); returns the files written."""
  written = []
  for name in names:
    report_dir = root / 'reports' / name
    if experiment_of(name) not in KEPT:
      got = recompute(name, root)
      record = run_records.read_json(report_dir / 'results.json')
      rechecked = report_parts.with_checks(record, got.checks)
      if 'checks' in record and rechecked != record:
        run_records.write_json(report_dir / 'results.json', rechecked)
        written.append(report_dir / 'results.json')
      text = (report_dir / 'report.md').read_text()
      new = report_parts.with_checks_section(text, got.checks)
      if new is not None and new != text:
        (report_dir / 'report.md').write_text(new)
        written.append(report_dir / 'report.md')
    for path, text in run_facts_texts(name, root).items():
      path.write_text(text)
      if path not in written:
        written.append(path)
  return written


# ------------------------------------- a committed report's machine and load, from its runs

FINISHED = ('completed', 'stopped_early')  # a finished run's status (results.json, members.csv)
# A report.md's hardware bullet by layout (its experiment, `experiment_of`, where listed, else
# report_parts.header's): the pattern, with `head`, the runs' `machine` (device and host) or
# `host`, `kept` (the wall times, as they are) and `load` (the load sentence: absent in older
# reports), and what goes between `kept` and the load sentence.
_MACHINE = r'^(?P<head>- \*\*Hardware\*\*: )(?P<machine>[^;\n]*)'
HARDWARE = {
    'header': (re.compile(_MACHINE + r'(?P<kept>;[^\n]*experiment\n  wall time \d+ s\.)'
                          r'(?: (?P<load>[^\n]+))?$', re.M), ' '),
    'unet_segmentation': (re.compile(
        _MACHINE + r'(?P<kept>;\n  training wall time [^\n]*? summed over the runs\.)'
        r'(?:(?: |\n  )(?P<load>[^\n]+))?$', re.M), '\n  '),
    'lenet5_mnist': (re.compile(
        r'^(?P<head>- \*\*Hardware\*\*: [^\n]*, host CPU\n  )(?P<host>[^;\n]*)'
        r'(?P<kept>; wall time [^\n]*\n  [^\n]*\(compilation excluded\)\.)'
        r'(?:\n  (?P<load>[^\n]+))?$', re.M), '\n  '),
    # one line, written whole by experiments.degradation.hardware
    'degradation': (re.compile(r'^(?P<head>- \*\*Hardware\*\*: )(?P<machine>[^\n]*)(?P<kept>)$',
                               re.M), '. '),
}
# lenet5_mnist_seeds' sentence on the sweep's load (report.md's seeds section and seeds.md).
SEEDS_LOAD = re.compile(r'^(?P<head>Sweep command: `[^`\n]*` \(rerun it to finish missing '
                        r'seeds\)\.)(?:[ \n](?P<load>(?!<!--)[^\n]+))?$', re.M)


def committed_runs(report_dir: pathlib.Path, record: dict) -> dict[str, dict] | None:
  """The finished runs of a committed report as its files record them, {run: results.json}:
  its results.json (`record`) where it is a run's own (lenet5_mnist); each <run>/results.json
  (run_records.run_records: an older run's load from its clock); the runs' results that
  `record` holds under 'runs'; else each finished member of members.csv, as an empty record (its
  results.json is not committed). None where the report commits no record of its runs."""
  if 'host_cpu' in record:
    return {record.get('name', '.'): record}
  runs = run_records.run_records(sorted(p.parent for p in report_dir.glob('*/results.json')))
  held = record.get('runs')
  if isinstance(held, dict):
    for name, entry in held.items():
      if isinstance(entry, list):  # {setting: [{'seed', 'results'}]} (normalization)
        runs.update({f"{name}/seed={m['seed']}": m['results'] for m in entry if m.get('results')})
      elif isinstance(entry, dict) and entry.get('status') in FINISHED:  # degradation's copies
        runs.setdefault(name, entry)
  elif (report_dir / 'members.csv').exists():
    for m in run_records.read_csv(report_dir / 'members.csv'):
      if m['status'] in FINISHED:
        runs.setdefault(m['name'], {})
  return runs or None


def _process_load(record: dict, load: dict) -> str:
  """Where the runs recorded no load: the figure an older experiment kept of its own process in
  `record` (its results.json or seeds.json), labelled as that, else nothing."""
  if load['recorded'] or record.get('load_average_start') is None or 'host_cpu' in record:
    return ''
  return (" The experiment process's 1-minute load average at its start was "
          f"{record['load_average_start']:.1f}, on {record['cpu_count']} cores.")


def _process_machine(text: str) -> str:
  """' (the process that wrote this report: <device>, host CPU <cpu>)' from report.md's
  environment section, '' without one."""
  env = dict(re.findall(r'^- \*\*(host_cpu|devices|device_count)\*\*: (.*)$', text, re.M))
  if 'host_cpu' not in env:
    return ''
  device = f"{env['device_count']} x {env['devices']}, " if 'devices' in env else ''
  return f" (the process that wrote this report: {device}host CPU {env['host_cpu']})"


def with_run_facts(name: str, text: str, report_dir: pathlib.Path) -> str:
  """Report `name`'s report.md `text` with the machine and load of its hardware bullet written
  as a fresh report writes them (run_records.machine_note, busy_note) from the runs' records:
  results.json's 'runs_host' and 'runs_load' where it has them, else `committed_runs`. Where
  those name no host, the report process's (its environment section) is given, labelled; where
  they hold no load, an older experiment process's own figure, labelled (`_process_load`). The
  environment section is labelled as the report process's (report_parts.ENVIRONMENT_NOTE)."""
  record = run_records.read_json(report_dir / 'results.json')
  runs = committed_runs(report_dir, record)
  host = record.get('runs_host') or run_records.host_record(runs)
  committed = 'runs_host' not in record  # else the runs' records as the report read them
  load = record.get('runs_load') or run_records.load_record(runs)
  layout = experiment_of(name)
  pattern, sep = HARDWARE.get(layout, HARDWARE['header'])
  found = pattern.search(text)
  if found is not None:
    label = '' if host['recorded'] else _process_machine(text)
    if layout == 'degradation':
      degradation = importlib.import_module('experiments.degradation')
      machine = degradation.hardware(runs or {}, committed) + label
    elif 'host' in found.groupdict():
      machine = run_records.host_note(host, committed) + label
    else:
      machine = run_records.machine_note(host, committed) + label
    sentence = run_records.busy_note(load) + _process_load(record, load)
    text = (text[:found.start()] + found['head'] + machine + found['kept'] + sep + sentence
            + text[found.end():])
  note = f'\n## Environment\n\n{report_parts.ENVIRONMENT_NOTE}\n\n'
  if note not in text:
    text = text.replace('\n## Environment\n\n', note, 1)
  return text


def with_seeds_load(text: str, seeds: dict) -> str:
  """`text` (lenet5_mnist's report.md or seeds.md) with the sweep's load sentence written from
  seeds.json (`seeds`): its 'runs_load', else its seeds, none of them committed with a record."""
  load = (seeds.get('runs_load')
          or run_records.load_record({i: {} for i in range(seeds['seeds_done'])}))
  sentence = run_records.busy_note(load) + _process_load(seeds, load)
  return SEEDS_LOAD.sub(lambda m: f"{m['head']}\n{sentence}", text)


def run_facts_texts(name: str, root: pathlib.Path = ROOT) -> dict[pathlib.Path, str]:
  """{path: new text} of report `name`'s files whose machine and load sentences differ from
  what the runs' records say: report.md (`with_run_facts`) and, where the report has seeds.json
  (lenet5_mnist), its seeds section and seeds.md (`with_seeds_load`)."""
  report_dir = root / 'reports' / name
  seeds_path = report_dir / 'seeds.json'
  seeds = run_records.read_json(seeds_path) if seeds_path.exists() else None
  out = {}
  for path in (report_dir / 'report.md', report_dir / 'seeds.md'):
    if not path.exists():
      continue
    old = path.read_text()
    new = with_run_facts(name, old, report_dir) if path.name == 'report.md' else old
    if seeds is not None:
      new = with_seeds_load(new, seeds)
    if new != old:
      out[path] = new
  return out


def params_table() -> str:
  data = json.loads((ROOT / 'reports/param_table/param_table.json').read_text())
  rows = []
  for m in data['models']:
    pub = published.PUBLISHED_PARAMS.get(m['model'])
    if pub is None or 'params' not in m:
      continue
    rows.append([m['model'], f"{m['params']:,}", f'{pub[0]:,}',
                 'exact' if m['params'] == pub[0] else f"{m['params'] - pub[0]:+,}",
                 f"{m['macs'] / 1e9:.2f}"])
  return markdown_table(['model', 'parameters (ours)', 'published', 'match', 'GMACs/image'], rows)


def benchmark_table() -> str:
  """The committed `make bench` results, one table per machine kind
  (benchmarks/results/cpu_2core*.json, gpu*.json), the newest first."""
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  results = ROOT / 'benchmarks/results'
  runs = [json.loads(p.read_text())
          for p in sorted(results.glob('cpu_2core*.json')) + sorted(results.glob('gpu*.json'))]
  parts = []
  for data in sorted(runs, key=lambda d: d['machine']['date'], reverse=True):
    data = train_step.upgrade_record(data)
    m, torch = data['machine'], data.get('torch', {})
    if data.get('interleaved'):  # since 2026-12-06: one process each, taking turns
      legend = ('"jax (defaults)" is the project\'s settings (XLA flags, CPU kernels, allocator: '
                f"{m.get('malloc', 'glibc, huge pages')}; PyTorch runs on the same allocator), "
                '"jax (xla)" the same without the CPU kernels, "jax (none)" XLA\'s defaults on the '
                'system allocator; every contender runs in its own process and they take turns, '
                f"window by window ({data['window_s']:g} s or more), for {data['repeats']} rounds: "
                "each figure is the median window, the ratio the median of the rounds' ratios")
    elif data.get('repeats'):  # since the CPU kernels: three variants, medians of rounds
      legend = ('"jax (defaults)" is the project\'s settings (XLA flags, CPU kernels, allocator: '
                f"{m.get('malloc', 'glibc, huge pages')}; PyTorch runs on the same allocator), "
                '"jax (xla)" the same without the CPU kernels, "jax (none)" XLA\'s defaults on the '
                f"system allocator; each figure is the median of {data['repeats']} rounds, the "
                "ratio the median of the rounds' ratios")
    else:
      legend = '"jax (none)" is XLA\'s defaults (the project\'s XLA settings off)'
    loop = '"loop" is the same step inside the training loop'
    if data.get('interleaved'):
      loop += ", its window right after the bare step's in every round"
    parts.append(f"Measured on {m['host_cpu']} [{m['isa']}], {m['date']}, with no other job "
                 f"running: `{data['command']}`. {legend}; {loop}; "
                 f"PyTorch {' and '.join(data['torch_modes'])}, {torch.get('dtype', 'float32')}"
                 f"{peak_legend(data)}.\n\n"
                 + train_step.table(data['rows'], data['variants'], data['torch_modes'],
                                    train_step.cpu_peak_of(m, torch.get('dtype', 'float32'))))
  return '\n\n'.join(parts)


def peak_legend(data: dict) -> str:
  """The legend's words on the measured peak and the before column, where the run has them."""
  m, words = data['machine'], ''
  peak = m.get('peak_flops')
  if peak:
    words += (f"; GFLOP/s = 6 x MACs x images/s, in brackets its share of this machine's peak "
              f"measured by an FMA loop (`python -m benchmarks.peak`: {peak['float32'] / 1e9:.0f} "
              'GFLOP/s float32' + (f", {peak['bfloat16'] / 1e9:.0f} bfloat16" if peak.get('bfloat16')
                                  else '') + f" on {peak['threads']} threads)")
  if m.get('compare_tree'):
    words += (f"; \"jax before\" is jax (defaults) as commit {m['compare_tree']} builds it, "
              'in the same interleaved rounds')
  return words


def time_to_accuracy_table() -> str:
  """benchmarks/results/time_to_accuracy_*.json: wall time from launch to the target."""
  rows = []
  for path in sorted((ROOT / 'benchmarks/results').glob('time_to_accuracy_*.json')):
    r = json.loads(path.read_text())
    for fw in ('jax', 'pytorch'):
      run = r.get(fw)
      if not run:
        continue
      hit, (last_step, last_s, last_acc) = run['reached'], run['curve'][-1]
      rows.append([r['task'], f"`{r['config']}`", f"{r['target']:.1%}",
                   'cnn_jax' if fw == 'jax' else 'PyTorch eager',
                   f"{hit['seconds']:.0f} s (step {hit['step']:,})" if hit else 'not reached',
                   f'{last_acc:.2%} after {last_s:.0f} s (step {last_step:,})',
                   f"{r['environment']['host_cpu']}, {r['environment']['date']}", f"`{r['command']}`"])
  rows += quarter_tta_rows()
  return markdown_table(['task', 'recipe', 'target', 'framework', 'time to target (launch to eval)',
                         'end of recipe', 'hardware, date', 'command'], rows)


def quarter_tta_rows() -> list[list[str]]:
  """ResNet-20 to Table 6's 91.25% from the quarter-schedule runs' own test curves (the run's
  wall time, summed over resumes, including its evaluations), once their report is committed."""
  path = ROOT / 'reports/degradation_quarter/results.json'
  if not path.exists():
    return []
  r = json.loads(path.read_text())
  rows = []
  for run, t in r.get('time_to_accuracy', {}).items():
    hit = (f"{t['wall_time_s']:.0f} s (step {t['step']:,})" if t['reached'] and t['wall_time_s']
           else 'not reached')
    best = (f"{t['best_accuracy_pct']:.2f}% at step {t['best_step']:,}"
            + ('' if t['finished'] else ' (running)'))
    host = r.get('runs', {}).get(run, {}).get('host_cpu', '?')
    rows.append([f'{run}_cifar10', '`configs/cifar_resnet.py:resnet20,quarter`',
                 f"{t['target_accuracy_pct']:.2f}%", 'cnn_jax', hit, best, host,
                 f"`{r['command']}`"])
  return rows


def suite_cache_table() -> str:
  """benchmarks/results/suite_compile_cache.json: the default suite, cold and warm cache."""
  from benchmarks import suite_cache  # pylint: disable=g-import-not-at-top
  facts = json.loads((ROOT / 'benchmarks/results/suite_compile_cache.json').read_text())
  m = facts['machine']
  return (f"Measured on {m['host_cpu']} [{m['isa']}], {m['date']}, commit {facts['git_commit']}: "
          f"`{facts['command']}` (each threshold with its own empty cache).\n\n"
          + suite_cache.table(facts['runs']))


TABLES = {'lenet5_mnist': lenet5_table, 'experiments': experiments_table,
          'param_counts': params_table, 'benchmark': benchmark_table,
          'time_to_accuracy': time_to_accuracy_table, 'suite_cache': suite_cache_table}


def render(text: str) -> str:
  """`text` (README.md) with every generated table replaced by its current contents."""
  for name, fn in TABLES.items():
    pattern = re.compile(rf'(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)', re.S)
    if not pattern.search(text):
      raise SystemExit(f'README.md has no <!-- {name}:begin/end --> markers.')
    text = pattern.sub(lambda m, fn=fn: m.group(1) + fn() + '\n' + m.group(2), text)
  return text


def main(argv: list[str]) -> None:
  if argv not in ([], ['--recheck']):
    raise SystemExit('usage: python -m experiments.readme_tables [--recheck]')
  if argv:
    for path in recheck():
      print(f'rewrote {path.relative_to(ROOT)}')
    for name in REPORTS:
      if (why := KEPT.get(experiment_of(name))):
        print(f'left the checks of {name} as they are: {why}')
  readme = ROOT / 'README.md'
  readme.write_text(render(readme.read_text()))
  print(f'updated {readme} ({", ".join(TABLES)}); {len(models.names())} models registered')
  for name in REPORTS:
    for problem in mismatches(name):
      print(f'{name}: {problem}', file=sys.stderr)


if __name__ == '__main__':
  main(sys.argv[1:])
