"""Fault injection: runs each failure scenario against real training processes and writes
reports/faults/report.md, a table of what was tried, how often, what survived and what was lost.

    python -m scripts.fault_report                    # every scenario, 20 SIGKILL points
    python -m scripts.fault_report --kills=5 --out=/tmp/faults

Every scenario trains LeNet-5 on a 1,000-image MNIST subset (`FAULT_CONFIG`, seconds a run) in a
fresh `python` process through `cnn_jax.cli.run_training`, as `python -m cnn_jax.main` would:

* SIGKILL at random points (after a random step, or the moment a checkpoint write has started),
  then the same command again, until the run completes: it must resume from a complete
  checkpoint every time and end bit-identical to an uninterrupted run (every array of the final
  state, the test figures).
* SIGTERM (pre-emption): the state is saved at the next step, the rerun resumes from it.
* Workdir lock: a second run on a busy workdir is refused; after the holder is SIGKILLed the
  workdir is usable at once.
* Damaged latest checkpoint (bit flips, truncation, deleted or empty files): the run says so and
  resumes from the step before; with every step damaged it refuses, with the fix.
* Full disk (a small tmpfs) and a workdir made read-only during the run (a remount) where this
  process may mount (root in a container); otherwise the same through a simulated ENOSPC/EROFS.
* A loss that becomes NaN: the run stops at that step, the last good checkpoint intact.

The helpers are also used by tests/test_faults.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

# LeNet-5 on 1,000 MNIST images: 20 steps at batch 50, a checkpoint every 3 steps.
TOTAL_STEPS = 20
FAULT_CONFIG = {
    'name': 'faults', 'data.train_subset': 1000, 'data.validation_size': 256, 'batch_size': 50,
    'num_epochs': 1, 'momentum': 0.9, 'learning_rate': 0.05, 'log_every_steps': 1,
    'checkpoint_every_steps': 3, 'progress_bar': False,
}

# A training process: the config is configs/lenet5_mnist.py with overrides given as JSON; an
# optional third argument stops it after that step (as a pre-emption would, exit code 130).
_CHILD = """
import json, sys
from cnn_jax import cli
from scripts.fault_report import make_config
cli.setup_process()
stop = int(sys.argv[3]) if len(sys.argv) > 3 else 0
cli.run_training(make_config(json.loads(sys.argv[2])), sys.argv[1], 'scripts.fault_report',
                 should_stop=(lambda step: step >= stop) if stop else None)
"""


def make_config(overrides: dict | None = None):
  """configs/lenet5_mnist.py with FAULT_CONFIG and `overrides` (dotted keys)."""
  from configs import lenet5_mnist  # pylint: disable=g-import-not-at-top
  config = lenet5_mnist.get_config()
  for key, value in {**FAULT_CONFIG, **(overrides or {})}.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = tuple(value) if isinstance(value, list) else value
  config.lock()
  return config


def child_env(extra: dict | None = None) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
  env.pop('XLA_FLAGS', None)
  env.update(extra or {})
  return env


def start(workdir, overrides: dict | None = None, env: dict | None = None,
          stop_at: int = 0) -> subprocess.Popen:
  args = [str(workdir), json.dumps(overrides or {})] + ([str(stop_at)] if stop_at else [])
  return subprocess.Popen([sys.executable, '-c', _CHILD] + args, cwd=ROOT, env=child_env(env),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(workdir, overrides: dict | None = None, timeout: float = 3600,
        env: dict | None = None, stop_at: int = 0) -> subprocess.CompletedProcess:
  proc = start(workdir, overrides, env, stop_at)
  out, err = proc.communicate(timeout=timeout)
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def committed_steps(workdir, kind: str = 'latest') -> list[int]:
  folder = pathlib.Path(workdir) / 'checkpoints' / kind
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []


def partial_writes(workdir) -> list[str]:
  folder = pathlib.Path(workdir) / 'checkpoints'
  return [str(p.relative_to(folder)) for p in folder.glob('*/*') if 'tmp' in p.name]


def logged_step(workdir) -> int:
  """The last step in metrics.jsonl (0 before the first record)."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return 0
  step = 0
  for line in path.read_text().splitlines():
    try:
      step = max(step, json.loads(line)['step'])
    except (ValueError, KeyError):
      pass
  return step


def resumed_from(stderr: str) -> int | None:
  match = re.search(r'Resuming from step (\d+)', stderr)
  return int(match.group(1)) if match else None


@dataclasses.dataclass
class KillPoint:
  """Kill once the run has logged `after_step`: `delay_s` later, or (during_write) the moment a
  checkpoint write is in progress."""
  after_step: int
  during_write: bool = False
  delay_s: float = 0.0


def random_points(n: int, total_steps: int, seed: int = 0) -> list[KillPoint]:
  """`n` kill points spread over the run; every other one waits for a checkpoint write."""
  rng = random.Random(seed)
  return [KillPoint(after_step=rng.randrange(0, total_steps - 2), during_write=i % 2 == 1,
                    delay_s=rng.uniform(0.0, 0.3)) for i in range(n)]


def kill_at(proc: subprocess.Popen, workdir, point: KillPoint, started: float,
            timeout: float = 3600) -> dict:
  """SIGKILLs `proc` (started at time `started`) at `point`; returns what was on disk then.

  Progress counts only once this process has rewritten metrics.jsonl (it drops what a killed
  run logged after its last checkpoint), so a rerun is not killed on its predecessor's log.
  """
  deadline = time.time() + timeout
  metrics = pathlib.Path(workdir) / 'metrics.jsonl'
  target = max(point.after_step, (committed_steps(workdir)[-1:] or [0])[0] + 1)
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and metrics.stat().st_mtime >= started and logged_step(workdir) >= target:
      break
    time.sleep(0.01)
  if point.during_write:
    while proc.poll() is None and not partial_writes(workdir) and time.time() < deadline:
      time.sleep(0.002)
  else:
    time.sleep(point.delay_s)
  finished = proc.poll() is not None
  if not finished:
    proc.kill()
  in_write = bool(partial_writes(workdir))
  _, err = proc.communicate()
  return {'point': dataclasses.asdict(point), 'killed': not finished, 'in_write': in_write,
          'logged_step': logged_step(workdir), 'committed': committed_steps(workdir),
          'partial': partial_writes(workdir), 'stderr': err[-2000:]}


def kill_chain(workdir, points: list[KillPoint], overrides: dict | None = None) -> dict:
  """Kills a run at each point in turn (each kill on a rerun of the same command), then reruns
  to the end. Records, for every rerun, the step it resumed from and whether that was the
  newest complete checkpoint at the kill."""
  kills = []
  for point in points:
    before = kills[-1]['committed'] if kills else []
    started = time.time()
    proc = start(workdir, overrides)
    kill = kill_at(proc, workdir, point, started)
    kill['resumed_from'] = resumed_from(kill['stderr'])
    kill['resume_ok'] = kill['resumed_from'] == (before[-1] if before else None)
    kills.append(kill)
  final = run(workdir, overrides)
  before = kills[-1]['committed'] if kills else []
  final_resume = resumed_from(final.stderr)
  return {'kills': kills, 'returncode': final.returncode, 'stderr': final.stderr[-3000:],
          'final_resumed_from': final_resume,
          'final_resume_ok': final_resume == (before[-1] if before else None)}


def state_leaves(workdir, overrides: dict | None = None, kind: str = 'latest'):
  """Every array of the newest `kind` checkpoint, as numpy (in this process)."""
  with _RESTORE_LOCK:
    return _state_leaves(workdir, overrides, kind)


_RESTORE_LOCK = threading.RLock()


def _state_leaves(workdir, overrides, kind):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cnn_jax import checkpointing, models, optim, parallel, train  # pylint: disable=g-import-not-at-top
  config = make_config(overrides)
  model = models.create(config.model, num_classes=10)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 20, TOTAL_STEPS))
  target = train.create_train_state(model, tx, (32, 32, 1), jax.random.key(0),
                                    parallel.replicated(parallel.make_mesh()))
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    state, meta = ckpts.restore(kind, target)
  finally:
    ckpts.close()
  return [np.asarray(x) for x in jax.tree.leaves(state)], meta


def same_state(a, b) -> bool:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def same_results(workdir, reference) -> bool:
  keys = ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss', 'best_step', 'steps')
  got = json.loads((pathlib.Path(workdir) / 'results.json').read_text())
  want = json.loads((pathlib.Path(reference) / 'results.json').read_text())
  return all(got.get(k) == want.get(k) for k in keys)


def damage(step_dir: pathlib.Path, how: str) -> str:
  """Damages one checkpoint step folder in place; returns what was done."""
  files = sorted((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
  biggest = files[-1]
  if how == 'flip':
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x10
    biggest.write_bytes(bytes(data))
    return f'one bit flipped in {biggest.relative_to(step_dir)}'
  if how == 'truncate':
    biggest.write_bytes(biggest.read_bytes()[:biggest.stat().st_size // 2])
    return f'{biggest.relative_to(step_dir)} truncated to half'
  if how == 'empty':
    for p in files:
      p.write_bytes(b'')
    return 'every file emptied'
  if how == 'delete_meta':
    shutil.rmtree(step_dir / 'meta')
    return 'meta item deleted'
  raise ValueError(how)


# ----------------------------------------------------------------------------- mounts (root)


def can_mount() -> bool:
  if os.geteuid() != 0 or not shutil.which('mount'):
    return False
  with tempfile.TemporaryDirectory() as d:
    ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', d],
                        capture_output=True, check=False).returncode == 0
    if ok:
      subprocess.run(['umount', d], check=False)
    return ok


@contextlib.contextmanager
def tmpfs(size: str):
  d = tempfile.mkdtemp(prefix='cnn_jax_tmpfs_')
  subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', d], check=True)
  try:
    yield pathlib.Path(d)
  finally:
    if subprocess.run(['umount', d], capture_output=True, check=False).returncode:
      subprocess.run(['umount', '-l', d], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


# ----------------------------------------------------------------------------- scenarios


@dataclasses.dataclass
class Row:
  fault: str
  how: str
  trials: int = 0
  survived: int = 0
  lost: int = 0
  notes: list = dataclasses.field(default_factory=list)
  details: list = dataclasses.field(default_factory=list)

  def add(self, ok: bool, note: str = '') -> None:
    self.trials += 1
    self.survived += ok
    self.lost += not ok
    if note:
      self.notes.append(note)


def scenario_kills(base: pathlib.Path, reference: pathlib.Path, ref_leaves, n: int,
                   per_chain: int = 5, pool=None) -> Row:
  """`n` SIGKILLs in chains of `per_chain` (each kill on the rerun of the last); chains run in
  `pool` (a concurrent.futures executor) when given."""
  row = Row('SIGKILL at random points', f'{n} kills, {per_chain} per run (each kill on the '
            'rerun of the last), half of them while a checkpoint write was in progress; then '
            'rerun to the end')
  points = random_points(n, total_steps=TOTAL_STEPS, seed=1)

  def one_chain(c):
    workdir = base / f'kills_{c}'
    chain = kill_chain(workdir, points[c:c + per_chain])
    with _RESTORE_LOCK:
      chain['identical'] = chain['returncode'] == 0 and same_state(
          state_leaves(workdir)[0], ref_leaves) and same_results(workdir, reference)
    return chain

  starts = range(0, n, per_chain)
  chains = list(pool.map(one_chain, starts) if pool is not None else map(one_chain, starts))
  in_write = killed = redone = 0
  for chain in chains:
    resumes = [k['resume_ok'] for k in chain['kills']] + [chain['final_resume_ok']]
    for k, ok in zip(chain['kills'], resumes[1:]):
      in_write += k['in_write']
      killed += k['killed']
      redone += k['logged_step'] - (k['committed'][-1] if k['committed'] else 0)
      row.add(ok and chain['identical'] and k['killed'])
  row.notes.append(f'{killed} processes killed, {in_write} of them while a checkpoint write was '
                   'in progress')
  row.notes.append('every rerun resumed from the newest complete checkpoint and every run ended '
                   'bit-identical to the uninterrupted one (all arrays of the final state, test '
                   'loss and accuracy)' if row.lost == 0 else 'FAILURES: see report.json')
  row.notes.append(f'work lost to the kills: {redone} steps recomputed in all')
  row.details = chains
  return row


def scenario_sigterm(base: pathlib.Path, reference: pathlib.Path, ref_leaves, n: int = 3) -> Row:
  row = Row('SIGTERM / Ctrl-C (pre-emption)', f'{n} runs sent SIGTERM after a random step; rerun')
  rng = random.Random(2)
  for i in range(n):
    workdir = base / f'sigterm_{i}'
    proc = start(workdir)
    step = rng.randrange(1, TOTAL_STEPS - 2)
    while proc.poll() is None and logged_step(workdir) < step:
      time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    saved = committed_steps(workdir)
    stopped = re.search(r'Stopped at step (\d+)', err)
    final = run(workdir)
    ok = (proc.returncode == 130 and stopped is not None and saved and
          int(stopped.group(1)) == saved[-1] and resumed_from(final.stderr) == saved[-1] and
          final.returncode == 0 and same_state(state_leaves(workdir)[0], ref_leaves))
    row.add(ok, f'stopped at step {stopped.group(1) if stopped else "?"}' if i == 0 else '')
  row.notes.append('exit code 130, the state saved at the stop step, resumed from it, '
                   'bit-identical end' if not row.lost else 'see the log')
  return row


def scenario_lock(base: pathlib.Path) -> Row:
  row = Row('Two runs on one workdir', 'a second run started while the first trains; the '
            'first SIGKILLed, then a third run')
  workdir = base / 'lock'
  first = start(workdir, {'num_epochs': 20})
  while first.poll() is None and logged_step(workdir) < 1:
    time.sleep(0.05)
  second = run(workdir)
  refused = second.returncode != 0 and 'in use by another run' in second.stderr
  row.add(refused and first.poll() is None, 'second run: ' + _last_line(second.stderr))
  first.kill()
  first.communicate()
  kept = committed_steps(workdir)
  third = start(workdir, {'num_epochs': 20})
  deadline = time.time() + 600
  while third.poll() is None and time.time() < deadline and \
      committed_steps(workdir)[-1:] == kept[-1:]:
    time.sleep(0.05)
  progressed = committed_steps(workdir)[-1:] != kept[-1:]
  third.kill()
  _, err = third.communicate()
  row.add(progressed and 'in use' not in err, 'after SIGKILL of the holder the next run took the '
          'lock at once (the OS released it) and trained on')
  return row


def scenario_damage(base: pathlib.Path, reference: pathlib.Path, ref_leaves) -> Row:
  row = Row('Damaged latest checkpoint', 'stopped run; the newest latest step damaged; rerun')
  for how in ('flip', 'truncate', 'empty', 'delete_meta'):
    workdir = base / f'damage_{how}'
    stopped = run(workdir, stop_at=12)
    steps = committed_steps(workdir)
    what = damage(workdir / 'checkpoints' / 'latest' / str(steps[-1]), how)
    final = run(workdir)  # the full run: resumes from the step before the damaged one
    ok = (stopped.returncode == 130 and 'is damaged' in final.stderr and
          resumed_from(final.stderr) == steps[-2] and final.returncode == 0 and
          same_state(state_leaves(workdir)[0], ref_leaves) and same_results(workdir, reference))
    row.add(ok, f'{what}: detected, resumed from step {resumed_from(final.stderr)}')
  # Every step damaged: the run refuses and changes nothing.
  workdir = base / 'damage_all'
  run(workdir, stop_at=12)
  steps = committed_steps(workdir)
  for step in steps:
    damage(workdir / 'checkpoints' / 'latest' / str(step), 'truncate')
  final = run(workdir)
  ok = final.returncode != 0 and 'can be restored' in final.stderr and \
      committed_steps(workdir) == steps and not (workdir / 'results.json').exists()
  row.add(ok, 'every step truncated: refused with the fix, nothing deleted, no fresh start')
  return row


def scenario_disk(base: pathlib.Path, mount_ok: bool) -> Row:
  if not mount_ok:
    return Row('Full disk / read-only workdir', 'skipped: needs permission to mount a tmpfs '
               '(tests/test_faults.py simulates both)')
  row = Row('Full disk / read-only workdir', 'a real tmpfs holding the workdir: (a) filled up '
            'by another file once two checkpoints exist, while training; (b) a stopped run\'s '
            'workdir remounted read-only (Linux refuses to remount a file system read-only while '
            'a process has a file open for writing), then rerun. Then the space freed or write '
            'access restored, and the command rerun')
  for case in ('full', 'read_only'):
    with tmpfs('64m') as mnt:
      workdir = mnt / 'run'
      if case == 'full':
        proc = start(workdir, {'num_epochs': 6})
        while proc.poll() is None and len(committed_steps(workdir)) < 2:
          time.sleep(0.01)
        _fill(mnt / 'filler')
        _, err = proc.communicate(timeout=3600)
        failed = proc.returncode not in (0, None)
      else:
        run(workdir, {'num_epochs': 6}, stop_at=12)
        subprocess.run(['mount', '-o', 'remount,ro', str(mnt)], check=True)
        result = run(workdir, {'num_epochs': 6})
        err, failed = result.stderr, result.returncode != 0
      kept = committed_steps(workdir)
      clear = failed and ('No space left' in err or 'Read-only' in err)
      if case == 'full':
        (mnt / 'filler').unlink()
      else:
        subprocess.run(['mount', '-o', 'remount,rw', str(mnt)], check=True)
      intact = bool(kept) and _restorable(workdir, {'num_epochs': 6})
      again = run(workdir, {'num_epochs': 6})
      ok = clear and intact and again.returncode == 0 and \
          resumed_from(again.stderr) == kept[-1]
      row.add(ok, f'{case}: "{_error_line(err)}"; steps {kept} intact; after the fix the rerun '
              f'resumed from step {resumed_from(again.stderr)} and completed')
  return row


def _fill(path: pathlib.Path) -> None:
  """Writes zeros to `path` until the file system is full."""
  block = bytes(1 << 16)
  try:
    with open(path, 'wb') as f:
      while True:
        f.write(block)
        f.flush()
  except OSError:
    pass


def scenario_nan(base: pathlib.Path) -> Row:
  row = Row('Loss becomes NaN/Inf', 'learning rate x 1e30 after step 10 (a checkpoint every 3 steps)')
  workdir = base / 'nan'
  overrides = {'lr_schedule': 'step', 'schedule_unit': 'steps', 'lr_boundaries': [10],
               'lr_decay_factor': 1e30}
  result = run(workdir, overrides)
  kept = committed_steps(workdir)
  match = re.search(r'from step (\d+)', result.stderr)
  bad = int(match.group(1)) if match else None
  import numpy as np  # pylint: disable=g-import-not-at-top
  leaves = state_leaves(workdir, overrides)[0] if kept else []
  finite = all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f' and x.ndim)
  ok = result.returncode != 0 and 'diverged' in result.stderr and bad is not None and \
      kept and kept[-1] < bad and finite
  row.add(ok, f'diverged at step {bad}; the run stopped there, checkpoints {kept} kept, all '
          'finite' if ok else _error_line(result.stderr))
  return row


def _restorable(workdir, overrides) -> bool:
  try:
    state_leaves(workdir, overrides)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def _last_line(text: str) -> str:
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1][:300] if lines else ''


def _error_line(text: str) -> str:
  """The exception the process ended with (the last line of its traceback)."""
  lines = text.splitlines()
  ours = [l for l in lines if re.match(r'(cnn_jax\.[\w.]+|FloatingPointError|Config error|Data '
                                       r'error)[:\s]', l)]
  other = [l for l in lines if re.match(r'[\w.]*(Error|Exception):', l)]
  return ((ours or other or [_last_line(text)])[-1])[:300]


def write_report(rows: list[Row], out: pathlib.Path, seconds: float) -> pathlib.Path:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True, exist_ok=True)
  table = '\n'.join(
      f'| {r.fault} | {r.how} | {r.trials} | {r.survived} | {r.lost} | {"; ".join(r.notes)} |'
      for r in rows)
  text = f"""# Fault report

Generated by `python -m scripts.fault_report` ({seconds / 60:.0f} min on
{report.host_cpu()}). Each scenario runs real training processes (LeNet-5, 1,000 MNIST images, 20
steps, a checkpoint every 3 steps). *Survived*: the run resumed from a complete checkpoint and
ended bit-identical to an uninterrupted run, or stopped with a clear error and its last good
checkpoint intact. *Lost*: anything else (a silent fresh start, a partial checkpoint restored, a
different result, a checkpoint destroyed).

| fault | what was tried | trials | survived | lost | notes |
|---|---|---|---|---|---|
{table}
"""
  path = out / 'report.md'
  path.write_text(text)
  (out / 'report.json').write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2,
                                              default=str))
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--out', default=str(ROOT / 'reports' / 'faults'))
  parser.add_argument('--keep', action='store_true', help='Keep the scenario workdirs.')
  parser.add_argument('--jobs', type=int, default=1,
                      help='Scenarios (and kill chains) run at the same time.')
  args = parser.parse_args(argv)
  start_time = time.time()
  base = pathlib.Path(tempfile.mkdtemp(prefix='cnn_jax_faults_'))
  try:
    reference = base / 'reference'
    ref = run(reference)
    if ref.returncode != 0:
      print(ref.stderr[-3000:], file=sys.stderr)
      return 1
    ref_leaves = state_leaves(reference)[0]
    scenarios = (('kills', lambda: scenario_kills(base, reference, ref_leaves, args.kills,
                                                  pool=chains)),
                 ('sigterm', lambda: scenario_sigterm(base, reference, ref_leaves)),
                 ('lock', lambda: scenario_lock(base)),
                 ('damage', lambda: scenario_damage(base, reference, ref_leaves)),
                 ('disk', lambda: scenario_disk(base, can_mount())),
                 ('nan', lambda: scenario_nan(base)))

    def timed(name, fn):
      t = time.time()
      row = fn()
      print(f'{name}: {row.survived}/{row.trials} survived ({time.time() - t:.0f} s)',
            file=sys.stderr, flush=True)
      return row

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as chains, \
        concurrent.futures.ThreadPoolExecutor(args.jobs) as others:
      futures = [others.submit(timed, name, fn) for name, fn in scenarios]
      rows = [f.result() for f in futures]
    path = write_report(rows, pathlib.Path(args.out), time.time() - start_time)
    print(path.read_text())
    return 0 if all(r.lost == 0 for r in rows) else 1
  finally:
    if not args.keep:
      shutil.rmtree(base, ignore_errors=True)
    else:
      print(f'workdirs kept in {base}', file=sys.stderr)


if __name__ == '__main__':
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.start()  # first: may restart the program, then sets XLA up
  sys.exit(main())
