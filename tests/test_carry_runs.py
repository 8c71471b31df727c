"""scripts/carry_runs: an unfinished run packed on one machine resumes on the next."""
import json
import tarfile

import pytest

from cnn_jax import checkpointing
from scripts import carry_runs


def _run(root, name, steps, best=(), finished=False):
  run = root / name
  for kind, kind_steps in (('latest', steps), ('best', best)):
    for s in kind_steps:
      (run / 'checkpoints' / kind / str(s) / 'state').mkdir(parents=True)
      (run / 'checkpoints' / kind / str(s) / 'state' / 'data').write_text(f'{kind} {s}')
  (run / 'checkpoints' / 'latest' / '99.orbax-checkpoint-tmp-1').mkdir()  # an unfinished write
  (run / 'metrics.jsonl').write_text(json.dumps({'step': steps[-1], 'split': 'train'}) + '\n')
  (run / 'config.json').write_text('{}')
  if finished:
    (run / 'results.json').write_text('{}')
  return run


def test_pack_keeps_the_newest_complete_steps_of_unfinished_runs_only(tmp_path):
  work = tmp_path / 'work'
  _run(work, 'resnet56', [500, 750], best=[250, 750])
  _run(work, 'plain20', [3000], finished=True)
  manifest = carry_runs.pack(work, tmp_path / 'carry.tar')
  assert manifest['runs'] == {'resnet56': {'step': 750, 'best_step': 750, 'finished': False}}
  with tarfile.open(tmp_path / 'carry.tar') as tar:
    names = set(tar.getnames())
  assert 'resnet56/checkpoints/latest/750/state/data' in names
  assert 'resnet56/checkpoints/best/750/state/data' in names and 'resnet56/metrics.jsonl' in names
  assert not any('/500' in n or '/250' in n or 'tmp' in n or n.startswith('plain20') for n in names)

  fresh = tmp_path / 'fresh'
  assert carry_runs.unpack(tmp_path / 'carry.tar', fresh) == {'resnet56': 750}
  assert (fresh / 'resnet56/checkpoints/latest/750/state/data').read_text() == 'latest 750'


def test_a_sweep_travels_whole_with_finished(tmp_path):
  """Members one level down; --finished brings the finished ones (results, best step) too, so
  the rerun sweep skips them and its report can restore their checkpoints."""
  work = tmp_path / 'sweep'
  _run(work, 'seed=0', [100, 200], best=[150], finished=True)
  _run(work / 'training', 'init=he', [40], best=[40])
  manifest = carry_runs.pack(work, tmp_path / 'carry.tar', finished=True)
  assert manifest['runs'] == {
      'seed=0': {'step': 200, 'best_step': 150, 'finished': True},
      'training/init=he': {'step': 40, 'best_step': 40, 'finished': False}}
  with tarfile.open(tmp_path / 'carry.tar') as tar:
    names = set(tar.getnames())
  assert {'seed=0/results.json', 'seed=0/checkpoints/best/150/state/data',
          'training/init=he/checkpoints/latest/40/state/data'} <= names
  assert not any(n.startswith('seed=0/checkpoints/latest') for n in names)
  assert set(carry_runs.pack(work, tmp_path / 'unfinished.tar')['runs']) == {'training/init=he'}
  fresh = tmp_path / 'fresh'
  assert carry_runs.unpack(tmp_path / 'carry.tar', fresh) == {'seed=0': 200, 'training/init=he': 40}
  assert (fresh / 'seed=0' / 'results.json').exists()
  assert carry_runs.unpack(tmp_path / 'carry.tar', fresh) == {}  # the second time: all kept


def test_unpack_never_overwrites_newer_local_work(tmp_path):
  work = tmp_path / 'work'
  _run(work, 'resnet56', [750], best=[750])
  carry_runs.pack(work, tmp_path / 'carry.tar')
  here = tmp_path / 'here'
  _run(here, 'resnet56', [1000])
  assert carry_runs.unpack(tmp_path / 'carry.tar', here) == {}
  assert not (here / 'resnet56/checkpoints/latest/750').exists()


def test_pack_refuses_a_run_that_is_training(tmp_path):
  work = tmp_path / 'work'
  run = _run(work, 'resnet56', [750])
  with checkpointing.WorkdirLock(run):
    with pytest.raises(checkpointing.WorkdirLocked):
      carry_runs.pack(work, tmp_path / 'carry.tar')
  assert not (tmp_path / 'carry.tar').exists()


def test_missing_or_damaged_input_is_a_clear_error_and_unpacks_nothing(tmp_path):
  with pytest.raises(SystemExit, match='does not exist'):
    carry_runs.pack(tmp_path / 'nowhere', tmp_path / 'carry.tar')
  with pytest.raises(SystemExit, match='cannot read .*Nothing was unpacked'):
    carry_runs.unpack(tmp_path / 'missing.tar', tmp_path / 'work')
  (tmp_path / 'bad.tar').write_bytes(b'not a tar file')
  with pytest.raises(SystemExit, match='written by `carry_runs pack`'):
    carry_runs.unpack(tmp_path / 'bad.tar', tmp_path / 'work')
  assert not (tmp_path / 'work').exists()
