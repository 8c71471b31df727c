"""Sweeps: a grid of config overrides times seeds, one workdir per member, aggregated over seeds.

    python -m cnn_jax.sweep --config=configs/lenet5_mnist.py:quick --workdir=workdirs/sweep \\
        --sweep='learning_rate=[0.1,0.01]' --sweep='momentum=[0,0.9]' --seeds=3 [--parallel=2]
    python -m cnn_jax.sweep --config=configs/lr_sweep.py --workdir=DIR     # the config's get_sweep()
    python -m cnn_jax.sweep ... --list              # print the members and their workdirs, run nothing
    python -m cnn_jax.sweep ... --member=4          # run member 4 alone (a cluster array task)
    python -m cnn_jax.sweep ... --aggregate_only    # write DIR/sweep.{csv,md,json} from what is done

The members are the product of the config file's `get_sweep(arg)` (a list of override dicts, if
the file defines one), the `--sweep=KEY=[v1,v2,...]` axes, and `--seeds=N` (seed = 0..N-1). Each
member trains in `DIR/<its settings>`, e.g. `DIR/learning_rate=0.1,seed=1`. A member whose
results.json exists is skipped and an interrupted one resumes from its checkpoint, so rerunning
the command completes the sweep. A member that failed (e.g. diverged) leaves `sweep_error.txt` in
its workdir and is skipped on reruns unless `--retry_failed`. `--config.key=value` overrides the
base config of every member. Bad sweep syntax or an unknown key fails before anything runs.

Aggregation (after every run, or `--aggregate_only`): `DIR/sweep.csv` (one row per setting: mean
and sample standard deviation over the finished seeds of each metric), `DIR/members.csv` (one row
per member), `DIR/sweep.md` (the same as a Markdown table) and `DIR/sweep.json`.
"""
from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import importlib.util
import inspect
import itertools
import json
import math
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from cnn_jax import cli, config_base, models, runtime, train
from cnn_jax.config_base import ConfigError
from cnn_jax.report import markdown_table

# Numbers of results.json that are aggregated over seeds, in table order.
METRICS = ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss', 'final_train_eval_accuracy',
           'best_epoch', 'num_params', 'wall_time_s', 'train_images_per_s')
ERROR_FILE = 'sweep_error.txt'


class SweepError(ConfigError):
  """A sweep that cannot run as written (its axes' syntax, a member's config, two members of one
  name). A ConfigError: an unknown key or a bad value (config_base.apply_overrides) is one too."""


@dataclasses.dataclass(frozen=True)
class Member:
  index: int
  name: str  # the workdir name: 'learning_rate=0.1,seed=1'
  overrides: dict  # dotted key -> value, in order; 'seed' included when swept
  config: ml_collections.ConfigDict

  @property
  def setting(self) -> dict:
    """The overrides except the seed: members that differ only by seed share a setting."""
    return {k: v for k, v in self.overrides.items() if k != 'seed'}


# ------------------------------------------------------------------------------- parsing


def parse_axis(text: str) -> tuple[str, list]:
  """'learning_rate=[1,0.1]' -> ('learning_rate', [1, 0.1]); 'model=[lenet5,mlp]' works too."""
  key, sep, values = text.partition('=')
  key, values = key.strip(), values.strip()
  if not sep or not key or not (values.startswith('[') and values.endswith(']')):
    raise SweepError(f'--sweep expects KEY=[v1,v2,...], e.g. --sweep=learning_rate=[0.1,0.01]; '
                     f'got {text!r}.')
  try:
    parsed = ast.literal_eval(values)
  except (ValueError, SyntaxError):  # bare words: [lenet5,mlp]
    parsed = [config_base.literal(v.strip()) for v in values[1:-1].split(',') if v.strip()]
  if not isinstance(parsed, (list, tuple)) or not parsed:
    raise SweepError(f'--sweep={text!r}: the values must be a non-empty list.')
  return key, list(parsed)


def expand(base: Sequence[dict] | None, axes: Sequence[tuple[str, list]], seeds: int) -> list[dict]:
  """The product base x axes x seeds as a list of ordered override dicts."""
  grid = [dict(b) for b in (base or [{}])]
  for key, values in axes:
    grid = [{**g, key: v} for g in grid for v in values]
  if seeds:
    grid = [{**g, 'seed': s} for g in grid for s in range(seeds)]
  return grid


def member_name(overrides: dict) -> str:
  parts = []
  for key, value in overrides.items():
    text = repr(value) if isinstance(value, float) else str(value)
    parts.append(f"{key}={text.replace(' ', '').replace('/', '_')}")
  return ','.join(parts) or 'default'


def build_members(config: ml_collections.ConfigDict, overrides: Sequence[dict]) -> list[Member]:
  """One validated config per override dict; fails on the first bad key or value."""
  members, names = [], set()
  for i, ov in enumerate(overrides):
    c = copy.deepcopy(config)
    for key, value in ov.items():
      config_base.set_key(c, key, value)
    try:
      config_base.validate(c)
      if c.model_kwargs:  # module fields are checked by the registry, not the schema
        models.create(c.model, num_classes=1, **c.model_kwargs)
    except (ValueError, KeyError) as e:
      raise SweepError(f'Sweep member {member_name(ov)}: {e}') from e
    name = member_name(ov)
    if name in names:
      raise SweepError(f'Two sweep members are both named {name!r}; remove the duplicate values.')
    names.add(name)
    members.append(Member(i, name, dict(ov), c))
  return members


def load_config_file(spec: str) -> tuple[Any, str | None]:
  """'configs/x.py:arg' -> (the module, 'arg')."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  if module_spec is None or not os.path.exists(path):
    raise SweepError(f'No config file {path!r}.')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg or None


def config_sweep(module, arg: str | None) -> list[dict] | None:
  """The config file's `get_sweep(arg)`, if it defines one."""
  fn = getattr(module, 'get_sweep', None)
  if fn is None:
    return None
  return fn(arg) if inspect.signature(fn).parameters else fn()


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep as its command line says it: config file, base overrides, axes and seeds."""
  config_file: str  # 'configs/lr_sweep.py:toy'
  axes: tuple[str, ...] = ()  # '--sweep' values: 'learning_rate=[1,0.1]'
  seeds: int = 0  # 0 = no seed axis (the config's seed)
  config_args: tuple[str, ...] = ()  # base overrides: 'key=value' (as --config.key=value)

  def base_config(self) -> ml_collections.ConfigDict:
    module, arg = load_config_file(self.config_file)
    return config_base.apply_overrides(module.get_config(arg), self.config_args)

  def members(self, config: ml_collections.ConfigDict | None = None) -> list[Member]:
    module, arg = load_config_file(self.config_file)
    axes = [parse_axis(a) for a in self.axes]
    config = self.base_config() if config is None else config
    return build_members(config, expand(config_sweep(module, arg), axes, self.seeds))

  def command(self, workdir, *extra: str) -> list[str]:
    """The command line that runs this sweep (plus `extra` flags) as a user types it."""
    return (['python', '-m', 'cnn_jax.sweep', f'--config={self.config_file}']
            + [f'--config.{a}' for a in self.config_args] + [f'--sweep={a}' for a in self.axes]
            + ([f'--seeds={self.seeds}'] if self.seeds else [])
            + [f'--workdir={_as_typed(workdir)}'] + list(extra))


def _as_typed(path) -> str:
  """A path inside the current directory as relative (how a user types it; no machine paths in
  records), any other as given."""
  path = pathlib.Path(path)
  try:
    return str(path.resolve().relative_to(pathlib.Path.cwd().resolve()))
  except ValueError:
    return str(path)


# -------------------------------------------------------------------------------- running


def is_done(workdir: pathlib.Path) -> bool:
  return (workdir / 'results.json').exists()


def has_failed(workdir: pathlib.Path) -> bool:
  return (workdir / ERROR_FILE).exists() and not is_done(workdir)


def pending(members: Sequence[Member], workdir: pathlib.Path, retry_failed=False) -> list[Member]:
  return [m for m in members if not is_done(workdir / m.name)
          and (retry_failed or not has_failed(workdir / m.name))]


def run_member(member: Member, workdir: pathlib.Path, command: str) -> dict:
  """Trains one member in `workdir/<name>` (resuming); a failure is written to sweep_error.txt."""
  run_dir = workdir / member.name
  run_dir.mkdir(parents=True, exist_ok=True)
  (run_dir / ERROR_FILE).unlink(missing_ok=True)
  try:
    return train.train_and_evaluate(member.config, run_dir, command=command)
  except (ValueError, KeyError, RuntimeError, FloatingPointError) as e:
    (run_dir / ERROR_FILE).write_text(f'{type(e).__name__}: {e}\n')
    print(f'[sweep] member {member.index} {member.name} failed: {e}', file=sys.stderr, flush=True)
    return {'status': 'failed', 'error': str(e)}


def run_sequential(members, workdir, command_for, retry_failed=False) -> str:
  """Runs the pending members one after another in this process; 'interrupted' or 'done'."""
  todo = pending(members, workdir, retry_failed)
  for k, m in enumerate(todo):
    print(f'[sweep] {k + 1}/{len(todo)}: member {m.index} {m.name}', file=sys.stderr, flush=True)
    if run_member(m, workdir, command_for(m)).get('status') == 'interrupted':
      return 'interrupted'
  return 'done'


def run_parallel(members, workdir, argv_for, parallel: int, retry_failed=False,
                 env: dict | None = None) -> str:
  """Runs the pending members `parallel` at a time, each in its own process (`argv_for(m)`);
  their output goes to DIR/logs/<name>.log. SIGTERM/Ctrl-C stops them (they save) and returns."""
  todo = list(pending(members, workdir, retry_failed))
  (workdir / 'logs').mkdir(parents=True, exist_ok=True)
  running: dict[int, tuple[subprocess.Popen, Any]] = {}
  while todo or running:
    if train.STOP_REQUESTED.is_set():
      for proc, _ in running.values():
        proc.terminate()
      for proc, log in running.values():
        proc.wait()
        log.close()
      return 'interrupted'
    while todo and len(running) < parallel:
      m = todo.pop(0)
      log = (workdir / 'logs' / f'{m.name}.log').open('a')
      print(f'[sweep] start member {m.index} {m.name} (log: {log.name})', file=sys.stderr,
            flush=True)
      running[m.index] = (subprocess.Popen(argv_for(m), stdout=log, stderr=subprocess.STDOUT,
                                           env=env), log)
    for index, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        del running[index]
        print(f'[sweep] member {index} exited with code {proc.returncode}', file=sys.stderr,
              flush=True)
    time.sleep(0.2)
  return 'done'


# ---------------------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float('nan')
  return mean, std


def aggregate(members: Sequence[Member], workdir: pathlib.Path, title: str = '') -> dict:
  """Reads every member's results.json; writes sweep.{csv,md,json} and members.csv in workdir."""
  workdir = pathlib.Path(workdir)
  rows = []
  for m in members:
    run_dir = workdir / m.name
    results = json.loads((run_dir / 'results.json').read_text()) if is_done(run_dir) else None
    status = (results['status'] if results else 'failed' if has_failed(run_dir)
              else 'running or interrupted' if (run_dir / 'metrics.jsonl').exists() else 'pending')
    rows.append({'index': m.index, 'name': m.name, 'overrides': m.overrides,
                 'setting': m.setting, 'status': status, 'results': results,
                 'error': (run_dir / ERROR_FILE).read_text().strip() if status == 'failed' else None})
  settings: list[dict] = []
  for row in rows:
    group = next((s for s in settings if s['setting'] == row['setting']), None)
    if group is None:
      group = {'setting': row['setting'], 'members': [], 'n_total': 0}
      settings.append(group)
    group['n_total'] += 1
    group['members'].append(row['name'])
    if row['results']:
      group.setdefault('results', []).append(row['results'])
      group.setdefault('seeds', []).append(row['overrides'].get('seed'))
  for group in settings:
    finished = group.pop('results', [])
    group['n'] = len(finished)
    group.setdefault('seeds', [])
    group['metrics'] = {}
    for key in METRICS:
      values = [float(r[key]) for r in finished if isinstance(r.get(key), (int, float))]
      if values:
        mean, std = _mean_std(values)
        group['metrics'][key] = {'mean': mean, 'std': std, 'values': values}
  summary = {'total': len(rows), 'done': sum(r['results'] is not None for r in rows),
             'failed': sum(r['status'] == 'failed' for r in rows),
             'settings': settings, 'members': rows}
  (workdir / 'sweep.json').write_text(json.dumps(summary, indent=2, default=str) + '\n')
  _write_csvs(summary, workdir)
  (workdir / 'sweep.md').write_text(markdown(summary, title) + '\n')
  return summary


def _setting_keys(summary) -> list[str]:
  keys: list[str] = []
  for s in summary['settings']:
    keys += [k for k in s['setting'] if k not in keys]
  return keys


def _write_csvs(summary: dict, workdir: pathlib.Path) -> None:
  keys = _setting_keys(summary)
  with (workdir / 'sweep.csv').open('w', newline='') as f:
    w = csv.writer(f)
    w.writerow(keys + ['n_seeds', 'n_total'] + [f'{m}_{s}' for m in METRICS for s in ('mean', 'std')])
    for s in summary['settings']:
      stats = [s['metrics'].get(m, {}).get(k, '') for m in METRICS for k in ('mean', 'std')]
      w.writerow([s['setting'].get(k, '') for k in keys] + [s['n'], s['n_total']] + stats)
  member_keys = keys + (['seed'] if any('seed' in r['overrides'] for r in summary['members']) else [])
  with (workdir / 'members.csv').open('w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['name'] + member_keys + ['status'] + list(METRICS))
    for r in summary['members']:
      res = r['results'] or {}
      w.writerow([r['name']] + [r['overrides'].get(k, '') for k in member_keys] + [r['status']]
                 + [res.get(m, '') for m in METRICS])


def pm(stat: dict | None, fmt: str = '{:.4f}', scale: float = 1.0) -> str:
  """'0.9912 ± 0.0008' (sample std); the bare mean when there is one value; '—' when none."""
  if not stat:
    return '—'
  mean = fmt.format(stat['mean'] * scale)
  return mean if math.isnan(stat['std']) else f"{mean} ± {fmt.format(stat['std'] * scale)}"


def markdown(summary: dict, title: str = '') -> str:
  keys = _setting_keys(summary)
  rows = []
  for s in summary['settings']:
    m = s['metrics']
    rows.append([s['setting'].get(k, '') for k in keys] + [
        f"{s['n']}/{s['n_total']}", pm(m.get('test_accuracy'), '{:.2f}%', 100),
        pm(m.get('test_loss')), pm(m.get('val_accuracy'), '{:.2f}%', 100),
        pm(m.get('best_epoch'), '{:.1f}'), pm(m.get('wall_time_s'), '{:.0f} s')])
  table = markdown_table(keys + ['seeds done', 'test accuracy', 'test loss', 'val accuracy',
                                 'best epoch', 'wall time per member'], rows)
  lines = [f'# {title or "Sweep"}', '',
           f"{summary['done']} of {summary['total']} members finished"
           + (f", {summary['failed']} failed" if summary['failed'] else '')
           + '; mean ± sample standard deviation over the finished seeds of each setting.', '',
           table]
  failed = [r for r in summary['members'] if r['status'] == 'failed']
  if failed:
    lines += ['', 'Failed members:', ''] + [f"- `{r['name']}`: {r['error']}" for r in failed]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------------- CLI


def main(argv):
  FLAGS = flags.FLAGS
  if len(argv) > 1:
    raise SystemExit(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.config is None or FLAGS.workdir is None:
    raise SystemExit('Both --config and --workdir are required.')
  workdir = pathlib.Path(FLAGS.workdir)
  config_args = tuple(a[len('--config.'):] for a in sys.argv[1:] if a.startswith('--config.'))
  spec = Sweep(FLAGS['config'].config_filename, tuple(FLAGS.sweep), FLAGS.seeds, config_args)
  try:
    members = spec.members(copy.deepcopy(FLAGS.config))
  except ConfigError as e:  # a SweepError, or an unknown key or bad value of an override
    cli.exit_on_config_error(e)
  if FLAGS.member is not None and not 0 <= FLAGS.member < len(members):
    print(f'Error: --member={FLAGS.member} is not in [0, {len(members) - 1}].', file=sys.stderr)
    sys.exit(2)
  if FLAGS.list:
    for m in members:
      state = 'done' if is_done(workdir / m.name) else 'failed' if has_failed(workdir / m.name) else ''
      print(f'{m.index:4d}  {workdir / m.name}  {state}')
    return
  cli.setup_process()
  workdir.mkdir(parents=True, exist_ok=True)
  member_cmd = lambda m: shlex.join(spec.command(workdir, f'--member={m.index}'))
  status = 'done'
  if FLAGS.member is not None:
    m = members[FLAGS.member]
    if is_done(workdir / m.name):
      print(f'[sweep] member {m.index} {m.name} is already done.', file=sys.stderr)
    else:
      result = run_member(m, workdir, member_cmd(m))
      status = result.get('status', 'done')
  elif not FLAGS.aggregate_only:
    if FLAGS.parallel > 1:
      argv_for = lambda m: ([sys.executable] + spec.command(workdir, f'--member={m.index}')[1:])
      status = run_parallel(members, workdir, argv_for, FLAGS.parallel, FLAGS.retry_failed)
    else:
      status = run_sequential(members, workdir, member_cmd, FLAGS.retry_failed)
  if FLAGS.member is None:
    summary = aggregate(members, workdir, title=f'Sweep of {spec.config_file}')
    print(f"[sweep] {summary['done']}/{summary['total']} members done, {summary['failed']} failed "
          f"-> {workdir / 'sweep.md'}", file=sys.stderr)
    if summary['failed']:
      status = 'failed'
  if status == 'interrupted':
    sys.exit(130)
  if status == 'failed':
    sys.exit(1)


def _define_flags():
  config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py[:arg]).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Sweep directory: one sub-directory per member.')
  flags.DEFINE_multi_string('sweep', [], "An axis KEY=[v1,v2,...], e.g. 'learning_rate=[1,0.1]'; "
                            'repeat for a grid.')
  flags.DEFINE_integer('seeds', 0, 'Add a seed axis 0..N-1 (0 = the config seed only).')
  flags.DEFINE_integer('parallel', 1, 'Members run at once, each in its own process.')
  flags.DEFINE_integer('member', None, 'Run only this member (0-based; e.g. $SLURM_ARRAY_TASK_ID).')
  flags.DEFINE_bool('aggregate_only', False, 'Only aggregate the finished members.')
  flags.DEFINE_bool('list', False, 'Print the members and their workdirs; run nothing.')
  flags.DEFINE_bool('retry_failed', False, 'Rerun members that failed before (sweep_error.txt).')


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
