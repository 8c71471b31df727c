"""Faults: a busy workdir, damaged checkpoints, a full or read-only disk, NaN, SIGKILL anywhere.

Every recovery is checked against an uninterrupted run: the resumed run must end with every array
of its state bit-identical. The 20-point SIGKILL test is slow; the default suite kills at 2 points.
`python -m scripts.fault_report` runs the same scenarios and writes reports/faults/report.md.
"""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn_jax import checkpointing, steps, train
from cnn_jax.checkpointing import CheckpointError, WorkdirError, WorkdirLocked
from scripts import fault_report as fr

STOP_AT = 12  # the stopped run has latest checkpoints at steps 9 and 12 (every 3 steps)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """An uninterrupted run of the fault config (20 steps), in this process."""
  workdir = tmp_path_factory.mktemp('reference')
  results = train.train_and_evaluate(fr.make_config(), workdir, command='test')
  return workdir, results, fr.state_leaves(workdir)[0]


@pytest.fixture(scope='module')
def stopped(tmp_path_factory):
  """The same run stopped (as by a pre-emption) after step 12."""
  workdir = tmp_path_factory.mktemp('stopped')
  out = train.train_and_evaluate(fr.make_config(), workdir,
                                 should_stop=lambda step: step >= STOP_AT, command='test')
  assert out == {'status': 'interrupted', 'step': STOP_AT}
  assert fr.committed_steps(workdir) == [STOP_AT - 3, STOP_AT]  # the two newest are kept
  return workdir


def _copy(src, tmp_path):
  dst = tmp_path / 'run'
  shutil.copytree(src, dst)
  return dst


def _assert_like_reference(workdir, results, reference):
  ref_dir, ref_results, ref_leaves = reference
  assert fr.same_state(fr.state_leaves(workdir)[0], ref_leaves)
  for key in ('test_accuracy', 'test_loss', 'val_loss', 'best_step', 'steps'):
    assert results[key] == ref_results[key], key


# ----------------------------------------------------------------------------- workdir lock


def test_second_run_on_a_busy_workdir_is_refused_and_a_killed_holder_frees_it(tmp_path):
  workdir = tmp_path / 'busy'
  workdir.mkdir()
  # Another process holds the lock as a run does (flock on <workdir>/.lock), then is killed.
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, os, sys, time\n'
       f'fd = os.open({str(workdir / checkpointing.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n'
       'fcntl.flock(fd, fcntl.LOCK_EX)\n'
       'os.write(fd, b\'{"pid": %d, "host": "h", "started": "t", "command": "c"}\' % os.getpid())\n'
       'print("locked", flush=True)\ntime.sleep(600)'],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(WorkdirLocked, match=rf'in use by another run \(pid {holder.pid}.*another --workdir'):
      train.train_and_evaluate(fr.make_config(), workdir, command='test')
    assert not (workdir / 'checkpoints').exists()  # refused before anything was written
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with checkpointing.WorkdirLock(workdir):  # the OS released the dead holder's lock
    with pytest.raises(WorkdirLocked):  # and the lock excludes a second holder in-process too
      with checkpointing.WorkdirLock(workdir):
        pass


# ----------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize('how', ['flip', pytest.param('truncate', marks=pytest.mark.slow)])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, stopped, reference, how,
                                                             capfd):
  workdir = _copy(stopped, tmp_path)
  fr.damage(workdir / 'checkpoints' / 'latest' / str(STOP_AT), how)
  results = train.train_and_evaluate(fr.make_config(), workdir, command='test')
  err = capfd.readouterr().err
  assert f'checkpoint at step {STOP_AT}' in err and 'is damaged' in err
  assert f'Resuming from step {STOP_AT - 3}' in err
  assert list((workdir / 'checkpoints' / 'damaged').iterdir())  # set aside, not deleted
  _assert_like_reference(workdir, results, reference)


def test_every_checkpoint_damaged_refuses_with_the_fix(tmp_path, stopped):
  workdir = _copy(stopped, tmp_path)
  for step in fr.committed_steps(workdir):
    fr.damage(workdir / 'checkpoints' / 'latest' / str(step), 'flip')
  with pytest.raises(CheckpointError, match=r'(?s)No latest checkpoint.*can be restored.*step 12'
                     r'.*step 9.*move .* away'):
    train.train_and_evaluate(fr.make_config(), workdir, command='test')
  assert fr.committed_steps(workdir) == [STOP_AT - 3, STOP_AT]  # nothing deleted or overwritten
  assert not (workdir / 'results.json').exists()


def test_checkpoint_in_the_old_meta_format_restores(tmp_path, stopped, reference):
  """Checkpoints written before RunState and fingerprints (one step, meta a plain dict without
  '_fingerprint') restore, and the run continues to the same end."""
  workdir = _copy(stopped, tmp_path)
  leaves, meta = fr.state_leaves(workdir)
  state, _ = _restore_state(workdir)
  shutil.rmtree(workdir / 'checkpoints')
  old_meta = {'best_value': float('inf'), 'best_epoch': None, 'best_step': None, 'bad_epochs': 0,
              'stopped_early': False, 'train_seconds': 1.5, 'timed_images': 300,
              'wall_seconds': 20.0, 'epochs_done': 0}
  assert set(old_meta) == set(meta)  # the keys RunState writes are the old ones
  old = ocp.CheckpointManager(workdir.resolve() / 'checkpoints' / 'latest',
                              options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
                              item_names=('state', 'meta'))
  old.save(STOP_AT, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(old_meta)))
  old.wait_until_finished()
  old.close()
  book = train.RunState.from_json(old_meta)
  assert book.to_json() == old_meta
  results = train.train_and_evaluate(fr.make_config(), workdir, command='test')
  _assert_like_reference(workdir, results, reference)


def _restore_state(workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, optim, parallel  # pylint: disable=g-import-not-at-top
  config = fr.make_config()
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 20, 20))
  target = steps.create_train_state(models.create('lenet5', num_classes=10), tx, (32, 32, 1),
                                    jax.random.key(0), parallel.replicated(parallel.make_mesh()))
  ckpts = checkpointing.Checkpoints(workdir)
  try:
    return ckpts.restore('latest', target)
  finally:
    ckpts.close()


def test_fingerprint_sees_a_single_changed_element():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  tree = {'w': jnp.arange(1000, dtype=jnp.float32), 'n': jnp.int32(3),
          'h': jnp.ones((4, 4), jnp.bfloat16)}
  base = checkpointing.fingerprint(tree)
  assert base == checkpointing.fingerprint(jax_copy(tree))
  for changed in ({**tree, 'w': tree['w'].at[517].set(517.00006)},
                  {**tree, 'w': tree['w'][::-1]},  # same values, other order
                  {**tree, 'n': jnp.int32(4)}, {**tree, 'h': tree['h'].at[3, 1].set(0)}):
    assert checkpointing.fingerprint(changed) != base


def jax_copy(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: x.copy(), tree)


# ----------------------------------------------------------------------------- disk


def test_full_disk_is_a_clear_error_and_the_last_checkpoint_survives(tmp_path, stopped,
                                                                     reference, monkeypatch):
  workdir = _copy(stopped, tmp_path)
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    del self, step, args, kwargs
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full_disk)
  with pytest.raises(WorkdirError, match=r'No space left on device.*last complete latest '
                     rf'checkpoint, step {STOP_AT}, is intact.*rerun'):
    train.train_and_evaluate(fr.make_config(), workdir, command='test')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', real_save)
  assert fr.committed_steps(workdir) == [STOP_AT - 3, STOP_AT]
  results = train.train_and_evaluate(fr.make_config(), workdir, command='test')
  _assert_like_reference(workdir, results, reference)


def test_read_only_workdir_is_a_clear_error(tmp_path, stopped, monkeypatch):
  workdir = _copy(stopped, tmp_path)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  if os.geteuid() != 0:  # a real read-only workdir (root writes through permissions)
    for p in [*workdir.rglob('*'), workdir]:
      p.chmod(0o555 if p.is_dir() else 0o444)
  else:
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
      if str(path).startswith(str(workdir)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
      return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(checkpointing.os, 'open', read_only)
  try:
    with pytest.raises(WorkdirError, match=r'Cannot write in the workdir .*(Read-only|Permission)'):
      train.train_and_evaluate(fr.make_config(), workdir, command='test')
  finally:
    for p in [workdir, *workdir.rglob('*')]:
      p.chmod(0o755 if p.is_dir() else 0o644)
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()} == before


# ----------------------------------------------------------------------------- NaN


def test_nonfinite_loss_stops_at_that_step_with_the_last_good_checkpoint(tmp_path):
  overrides = {'lr_schedule': 'step', 'schedule_unit': 'steps', 'lr_boundaries': (10,),
               'lr_decay_factor': 1e30}  # the rate jumps to 5e28 after step 10
  with pytest.raises(FloatingPointError, match='diverged') as info:
    train.train_and_evaluate(fr.make_config(overrides), tmp_path, command='test')
  match = re.search(r'from step (\d+) .* stopped at step (\d+) without saving. The last good '
                    r'checkpoint \(step (\d+)\)', str(info.value))
  assert match, info.value
  bad, stopped_at, last = map(int, match.groups())
  assert stopped_at == bad > 10  # checked at every step here (log_every_steps=1)
  assert fr.committed_steps(tmp_path)[-1] == last < bad  # nothing saved at or after it
  leaves, _ = fr.state_leaves(tmp_path, overrides)  # (scalars: the plateau's best is inf)
  assert all(np.all(np.isfinite(x)) for x in leaves if x.dtype.kind == 'f' and x.ndim)


# ----------------------------------------------------------------------------- SIGKILL


def _kill_test(tmp_path, reference, points):
  workdir = tmp_path / 'killed'
  chain = fr.kill_chain(workdir, points)
  assert chain['returncode'] == 0, chain['stderr']
  for kill in chain['kills']:
    assert kill['resume_ok'], kill  # resumed from the newest complete checkpoint, or none
  assert chain['final_resume_ok'], chain
  ref_dir, _, ref_leaves = reference
  assert fr.same_state(fr.state_leaves(workdir)[0], ref_leaves)
  assert fr.same_results(workdir, ref_dir)
  return chain


def test_sigkill_at_two_points_resumes_bit_identical(tmp_path, reference):
  """One kill after a random step, one while a checkpoint write is in progress."""
  chain = _kill_test(tmp_path, reference, [fr.KillPoint(after_step=7, delay_s=0.05),
                                           fr.KillPoint(after_step=13, during_write=True)])
  assert all(k['killed'] for k in chain['kills'])


@pytest.mark.slow
def test_sigkill_at_twenty_random_points_resumes_bit_identical(tmp_path, reference):
  points = fr.random_points(20, total_steps=fr.TOTAL_STEPS, seed=1)
  for c in range(0, 20, 5):
    chain = _kill_test(tmp_path / f'chain{c}', reference, points[c:c + 5])
  del chain
