"""A real process, stopped by SIGTERM or killed by SIGKILL, resumes when the command is rerun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

ARGS = ['--config=configs/lenet5_mnist.py', '--config.data.train_subset=12800',
        '--config.batch_size=64', '--config.num_epochs=3', '--config.checkpoint_every_steps=40',
        '--config.log_every_steps=40', '--config.progress_bar=False']


def _start(workdir):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.Popen([sys.executable, '-m', 'cnn_jax.main', f'--workdir={workdir}'] + ARGS,
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _wait_for_checkpoint(workdir, proc, timeout=120):
  latest = workdir / 'checkpoints' / 'latest'
  deadline = time.time() + timeout
  while time.time() < deadline:
    if latest.exists() and any(p.name.isdigit() for p in latest.iterdir()):
      return
    if proc.poll() is not None:
      pytest.fail(f'run ended before its first checkpoint: {proc.communicate()[1][-2000:]}')
    time.sleep(0.2)
  pytest.fail('no checkpoint appeared')


@pytest.mark.parametrize('sig,expected_rc', [(signal.SIGTERM, 130), (signal.SIGKILL, -9)])
def test_stopped_run_resumes_on_rerun(tmp_path, sig, expected_rc):
  workdir = tmp_path / 'run'
  proc = _start(workdir)
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == expected_rc, err[-2000:]
  assert not (workdir / 'results.json').exists()
  if sig == signal.SIGTERM:
    assert 'Rerun the same command to resume' in err
  rerun = _start(workdir)
  _, err = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, err[-3000:]
  assert 'Resuming from step' in err
  results = json.loads((workdir / 'results.json').read_text())
  assert results['status'] == 'completed' and results['steps'] == 3 * 200
  assert results['test_accuracy'] > 0.9
