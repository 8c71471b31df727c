"""Carries unfinished runs from one machine to the next: a long CPU protocol that outlives a
session (or a machine) resumes where it stopped instead of starting over.

    python -m scripts.carry_runs pack --workdir=workdirs/degradation_cpu --out=carry/degradation_cpu.tar
    python -m scripts.carry_runs unpack --archive=carry/degradation_cpu.tar --workdir=workdirs/degradation_cpu

`pack` stores, for every run directory below --workdir (at any depth: a sweep's members too)
that has checkpoints but no results.json, its records (metrics.jsonl, config.json) and the newest
complete step of checkpoints/latest and checkpoints/best (orbax writes a step to a temporary
folder and renames it when complete; older steps are left out), plus MANIFEST.json (run, step,
date, commit). `--finished` also packs the finished runs (results.json, records, newest best
step), for a sweep whose finished members must not run again and whose report restores their
checkpoints. Stop the run first (SIGTERM
saves the state; the workdir lock refuses to pack a run that is training). `unpack` restores each
run unless the workdir already holds a run at that step or later, so it never overwrites newer
work; then rerun the experiment's command to resume.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import pathlib
import subprocess
import sys
import tarfile

from cnn_jax import checkpointing

RECORDS = ('metrics.jsonl', 'config.json')
MANIFEST = 'MANIFEST.json'


def newest_step(folder: pathlib.Path) -> pathlib.Path | None:
  """The newest complete orbax step folder (a plain integer name) in `folder`."""
  steps = [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
  return max(steps, key=lambda p: int(p.name), default=None)


def unfinished_runs(workdir: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in run_dirs(workdir) if not (p / 'results.json').exists()]


def run_dirs(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Every run directory below `workdir`: one with a checkpoints folder (what the loop makes)."""
  return sorted(p.parent for p in workdir.rglob('checkpoints') if p.is_dir()
                and not any(part == 'checkpoints' for part in p.parent.relative_to(workdir).parts))


def pack(workdir: pathlib.Path, out: pathlib.Path, finished: bool = False) -> dict:
  manifest = {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              'commit': _git_commit(), 'workdir': str(workdir), 'runs': {}}
  if not workdir.is_dir():
    raise SystemExit(f'carry_runs: {workdir} does not exist; pass the experiment\'s --workdir.')
  runs = run_dirs(workdir) if finished else unfinished_runs(workdir)
  if not runs:
    raise SystemExit(f'carry_runs: no unfinished run (checkpoints, no results.json) in {workdir}.')
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + '.tmp')
  with tarfile.open(tmp, 'w') as tar:
    for run in runs:
      with checkpointing.WorkdirLock(run):  # refuses a run that is training
        latest = newest_step(run / 'checkpoints' / 'latest')
        done = (run / 'results.json').exists()
        if latest is None:
          continue
        best = newest_step(run / 'checkpoints' / 'best')
        steps = ([best] if best else [latest]) if done else [latest] + ([best] if best else [])
        records = RECORDS + (('results.json',) if done else ())
        for path in [run / r for r in records] + steps:
          if path.exists():
            tar.add(path, arcname=str(path.relative_to(workdir)))
        manifest['runs'][str(run.relative_to(workdir))] = {
            'step': int(latest.name), 'best_step': int(best.name) if best else None,
            'finished': done}
    data = json.dumps(manifest, indent=2).encode()
    info = tarfile.TarInfo(MANIFEST)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
  tmp.replace(out)  # atomic: a killed pack leaves the previous archive intact
  return manifest


def unpack(archive: pathlib.Path, workdir: pathlib.Path) -> dict:
  done = {}
  try:
    tar = tarfile.open(archive)
    manifest = json.load(tar.extractfile(MANIFEST))
  except (OSError, tarfile.TarError, KeyError, ValueError) as e:
    raise SystemExit(f'carry_runs: cannot read {archive} ({type(e).__name__}: {e}); it must be a '
                     'file written by `carry_runs pack`. Nothing was unpacked.') from e
  with tar:
    for name, info in manifest['runs'].items():
      local = newest_step(workdir / name / 'checkpoints' / 'latest')
      if (workdir / name / 'results.json').exists() or (local and int(local.name) >= info['step']):
        print(f'carry_runs: {name}: kept the local run (finished or at step '
              f'{local.name if local else "?"} >= {info["step"]}).', file=sys.stderr)
        continue
      members = [m for m in tar.getmembers() if m.name.startswith(f'{name}/')]
      tar.extractall(workdir, members=members, filter='data')
      done[name] = info['step']
      print(f'carry_runs: {name}: restored at step {info["step"]}.', file=sys.stderr)
  return done


def _git_commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='action', required=True)
  p = sub.add_parser('pack')
  p.add_argument('--workdir', type=pathlib.Path, required=True)
  p.add_argument('--out', type=pathlib.Path, required=True)
  p.add_argument('--finished', action='store_true', help='also pack the finished runs')
  u = sub.add_parser('unpack')
  u.add_argument('--archive', type=pathlib.Path, required=True)
  u.add_argument('--workdir', type=pathlib.Path, required=True)
  args = parser.parse_args(argv)
  if args.action == 'pack':
    manifest = pack(args.workdir, args.out, args.finished)
    runs = ', '.join(f"{k} (step {v['step']})" for k, v in manifest['runs'].items())
    print(f'packed {runs} into {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)')
  else:
    unpack(args.archive, args.workdir)


if __name__ == '__main__':
  main()
