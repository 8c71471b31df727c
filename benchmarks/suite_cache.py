"""The default test suite's wall time with a cold and then a warm persistent compilation cache.

    python -m benchmarks.suite_cache [--runs=2] [--min_compile_secs=0.1,1]
        [--out=benchmarks/results/suite_compile_cache.md]

Runs the README's test command's pytest (`python -m pytest -q`, the default suite) `--runs` times
in a row against one new, empty JAX compilation cache folder (JAX_COMPILATION_CACHE_DIR, which
cnn_jax/runtime.py otherwise points at the project cache): the first run compiles everything
and fills it, the later ones read what it holds. Everything else stays as a user has it (the
decoded-dataset cache included), so the difference between the runs is the compilation cache.
Writes a markdown table (and the same as JSON beside it) with each run's wall time, pytest's
summary and the cache's size after the run. `--min_compile_secs` repeats that for each value of
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS (each with its own empty cache; default: the project's,
cnn_jax.runtime.CACHE_MIN_COMPILE_SECS). Run it alone on the machine: it is a timing.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile
import time

from benchmarks import harness

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _cache_size(path: pathlib.Path) -> tuple[int, int]:
  files = [p for p in path.rglob('*') if p.is_file()]
  return len(files), sum(p.stat().st_size for p in files)


def run_suite(cache: pathlib.Path, min_compile_secs: str, pytest_args: list[str]) -> dict:
  env = {'JAX_COMPILATION_CACHE_DIR': str(cache),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': min_compile_secs}
  start = time.perf_counter()
  out = harness.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                     *pytest_args], env, cwd=ROOT)
  wall = time.perf_counter() - start
  lines = [l for l in out.stdout.strip().splitlines() if l.strip()]
  summary = next((l.strip('= ') for l in reversed(lines) if re.search(r'\d+ (passed|failed)', l)),
                 lines[-1] if lines else '')
  entries, size = _cache_size(cache)
  return {'min_compile_secs': float(min_compile_secs), 'wall_s': wall, 'returncode': out.returncode, 'summary': summary,
          'cache_entries': entries, 'cache_mb': size / 2**20}


def table(runs: list[dict]) -> str:
  """Markdown: one row per suite run, its speed-up against the cold run of its threshold."""
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  rows, cold = [], None
  for r in runs:
    cold = r if r['cold'] else cold
    rows.append([f"{r['min_compile_secs']:g} s", 'cold: empty cache' if r['cold'] else 'warm',
                 f"{r['wall_s'] / 60:.1f} min", f"{cold['wall_s'] / r['wall_s']:.2f}x",
                 r['summary'], f"{r['cache_entries']:,} / {r['cache_mb']:,.1f} MB"])
  return report.markdown_table(['cache threshold', 'run', 'wall time', 'speed-up vs cold',
                                'pytest', 'cache entries / size'], rows)



def recorded_args(args: list[str]) -> str:
  """`args` as a committed record keeps them: a path inside the checkout relative to it, any
  other absolute path as `<elsewhere>/` and its file name (this machine's folders mean nothing
  elsewhere)."""
  def one(arg: str) -> str:
    flag, eq, value = arg.partition('=')
    if not eq or not value.startswith('/'):
      return arg
    path = pathlib.Path(value).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else f'<elsewhere>/{path.name}'
    return f'{flag}={shown}'
  return ' '.join(one(a) for a in args)

def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', type=int, default=2)
  parser.add_argument('--min_compile_secs', default=None,
                      help="comma-separated cache thresholds to compare (default: the project's)")
  parser.add_argument('--out', default=None, help='markdown file; the JSON goes beside it')
  parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments (e.g. a test file)')
  args = parser.parse_args()
  from benchmarks import train_step  # pylint: disable=g-import-not-at-top
  from cnn_jax import report, runtime  # pylint: disable=g-import-not-at-top
  thresholds = (args.min_compile_secs or runtime.CACHE_MIN_COMPILE_SECS).split(',')
  load_start = os.getloadavg()[0]  # before the suite's own load
  runs = []
  for threshold in thresholds:
    with tempfile.TemporaryDirectory(prefix='jax_cache_') as tmp:
      for i in range(args.runs):
        r = run_suite(pathlib.Path(tmp), threshold, args.pytest_args)
        r['cold'] = i == 0
        runs.append(r)
        print(f"threshold {threshold} s, run {i + 1} ({'cold' if i == 0 else 'warm'} cache): "
              f"{r['wall_s']:.0f} s, {r['summary']}, cache {r['cache_entries']} entries / "
              f"{r['cache_mb']:.0f} MB", flush=True)
  env = report.environment()
  facts = {'command': 'python -m benchmarks.suite_cache ' + recorded_args(sys.argv[1:]),
           'machine': train_step.machine(measure_peak=False), 'git_commit': env['git_commit'], 'jax': env['jax'],
           'load_average_start': load_start, 'runs': runs}
  load, cpus = facts['load_average_start'], os.cpu_count()
  quiet = (f'1-minute load average {load:.1f} at the start: nothing else heavy ran'
           if load < 0.5 * cpus else
           f'1-minute load average {load:.1f} at the start on {cpus} cores: another job ran, '
           'so these wall times are not a speed figure')
  text = f"""# The default test suite with a cold and a warm compilation cache

Generated by `{facts['command']}` on {facts['machine']['host_cpu']}
[{facts['machine']['isa']}], {facts['machine']['date']}, commit {facts['git_commit']}, jax
{facts['jax']}; {quiet}. Each run is `python -m pytest -q` (the default suite of
`make test`) against one new JAX_COMPILATION_CACHE_DIR; the decoded-dataset cache was the same for all runs.

{table(runs)}

JAX writes an executable to the cache only when compiling it took at least the threshold
(`jax_persistent_cache_min_compile_time_secs`: 1 s by JAX's default,
{runtime.CACHE_MIN_COMPILE_SECS} s by the project's, cnn_jax/runtime.py); what compiled
faster is compiled again on every run.
"""
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix('.json').write_text(json.dumps(facts, indent=2) + '\n')
  if any(r['returncode'] for r in runs):
    raise SystemExit('a suite run failed: see the pytest summaries above')


if __name__ == '__main__':
  main()
