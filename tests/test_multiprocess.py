"""Multi-process training on one machine: N processes joined by jax.distributed (gloo on the CPU)
train exactly as one process with the same number of devices.

The 2 x 2 run is also stopped by a request on process 1 only: every process must stop at the
same step (the next agreement point), the checkpoint is written once, and all of them restore it
and go on to the same end.
"""
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from scripts import launch_local
from tests.helpers import ROOT

_SCRIPT = r"""
import json, os, sys
from cnn_jax import parallel
parallel.maybe_initialize_distributed(bool(os.environ.get('JAX_NUM_PROCESSES')))
import jax
from cnn_jax import train
from cnn_jax.metric_writers import read_metrics
from tests.helpers import tiny_config

workdir, stop_on_1 = sys.argv[1], int(sys.argv[2])
config = tiny_config(num_steps=8, log_every_steps=1, batch_size=32, stop_check_every_steps=2,
                     checkpoint_every_steps=3, distributed=jax.process_count() > 1,
                     **{'data.train_subset': 512, 'data.validation_size': 64})
out = {'process': jax.process_index(), 'devices': jax.device_count(),
       'local_devices': jax.local_device_count()}
if stop_on_1:
  # Only process 1 asks to stop (after step 3); the processes agree at step 4.
  wants = lambda step: jax.process_index() == 1 and step >= stop_on_1
  out['first'] = train.train_and_evaluate(config, workdir, should_stop=wants, command='test')
  out['latest_after_stop'] = sorted(int(p) for p in os.listdir(workdir + '/checkpoints/latest')
                                    if p.isdigit())
results = train.train_and_evaluate(config, workdir, command='test')
out['test_loss'] = results['test_loss']
if jax.process_index() == 0:
  records = read_metrics(workdir + '/metrics.jsonl')
  out['losses'] = [r['loss'] for r in records if r['split'] == 'train']
  out['steps'] = [(r['split'], r['step']) for r in records]
print('RESULT', json.dumps(out), flush=True)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _result(stdout):
  return json.loads([l for l in stdout.splitlines() if l.startswith('RESULT ')][-1][7:])


def _run_processes(workdir, processes, devices_per_process, stop_on_1=0, timeout=1800):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-c', _SCRIPT, str(workdir), str(stop_on_1)], cwd=ROOT,
      env=launch_local.process_env(i, processes, port, devices_per_process,
                                   base={**os.environ, 'JAX_PLATFORMS': 'cpu'}),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, err[-4000:]
      outs.append((_result(out), err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def _run_single(workdir, devices, timeout=1800):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT),
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  r = subprocess.run([sys.executable, '-c', _SCRIPT, str(workdir), '0'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=timeout, check=False)
  assert r.returncode == 0, r.stderr[-4000:]
  return _result(r.stdout)


def _assert_same_training(one, many):
  assert len(one['losses']) == 8
  assert len(many['losses']) == 8, many['steps']
  for a, b in zip(one['losses'], many['losses']):
    assert abs(a - b) < 1e-5, (one['losses'], many['losses'])
  assert abs(one['test_loss'] - many['test_loss']) < 1e-5
  assert len(many['steps']) == len(set(map(tuple, many['steps'])))  # metrics written once


def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  one = _run_single(tmp_path / 'one', devices=4)
  outs = _run_processes(tmp_path / 'two', processes=2, devices_per_process=2, stop_on_1=3)
  zero, first = outs[0][0], outs[1][0]
  for out, _ in outs:
    assert out['devices'] == 4 and out['local_devices'] == 2
    assert out['first'] == {'status': 'interrupted', 'step': 4}  # the same step on both
    assert out['latest_after_stop'] == [3, 4]
    assert out['test_loss'] == zero['test_loss']  # every process sees the same numbers
  assert 'losses' not in first  # process 1 writes no metrics
  _assert_same_training(one, zero)
  assert 'Resuming from step 4' in outs[0][1]
  assert 'Resuming from step' not in outs[1][1]  # logs come from process 0 only
  assert (tmp_path / 'two' / 'results.json').exists()


@pytest.mark.slow
def test_four_processes_match_one_process_of_four(tmp_path):
  one = _run_single(tmp_path / 'one', devices=4)
  outs = _run_processes(tmp_path / 'four', processes=4, devices_per_process=1)
  _assert_same_training(one, outs[0][0])


@pytest.mark.slow
def test_launcher_runs_main_and_sigterm_stops_every_process_at_one_step(tmp_path):
  """python -m scripts.launch_local ... -- <cnn_jax.main args>; SIGTERM to the launcher reaches
  both processes, which save one step and exit 130; the same command resumes and completes."""
  workdir = tmp_path / 'launched'
  cmd = [sys.executable, '-m', 'scripts.launch_local', '--processes=2',
         '--devices_per_process=2', '--', '--config=configs/lenet5_mnist.py',
         f'--workdir={workdir}', '--config.data.train_subset=2048', '--config.batch_size=32',
         '--config.num_epochs=2', '--config.log_every_steps=4', '--config.progress_bar=False',
         '--config.stop_check_every_steps=4']
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  with open(tmp_path / 'launcher.log', 'w') as log:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  metrics = workdir / 'metrics.jsonl'
  import time  # pylint: disable=g-import-not-at-top
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None and not (
      metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.1)
  proc.terminate()
  proc.wait(timeout=600)
  assert proc.returncode == 130, (tmp_path / 'launcher.log').read_text()[-3000:]
  logs = [(workdir / f'process_{i}.log').read_text() for i in range(2)]
  stops = [re.findall(r'Stopped at step (\d+)', log) for log in logs]
  assert stops[0] and stops[0][-1].isdigit(), logs
  step = int(stops[0][-1])
  assert step % 4 == 0
  assert str(step) in os.listdir(workdir / 'checkpoints' / 'latest')
  r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                     check=False)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'Resuming from step {step}' in (workdir / 'process_0.log').read_text()
  results = json.loads((workdir / 'results.json').read_text())
  assert results['process_count'] == 2 and results['device_count'] == 4
  assert results['steps'] == 2 * 2048 // 32
