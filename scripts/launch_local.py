"""Runs a training command as N local processes joined by jax.distributed (multi-host on one machine).

    python -m scripts.launch_local --processes=2 --devices_per_process=2 -- \
        --config=configs/lenet5_mnist.py:quick --workdir=workdirs/mp

Starts `python -m cnn_jax.main <args> --config.distributed=True` (or `--module=...`) once per
process with JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID set, on the CPU with
`--xla_force_host_platform_device_count=<devices_per_process>` and gloo collectives: the same code
path as several hosts. Process i's output goes to `<workdir>/process_<i>.log` (process 0's also
to the terminal). SIGTERM or Ctrl-C is forwarded to every process, which agree on the step to
save at (exit code 130); if one process fails, the others are stopped. Exits with the first
failure's exit code, else 130 if the run was stopped, else 0.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
INTERRUPTED = 130  # cnn_jax.cli: the run saved its state on SIGTERM / Ctrl-C and stopped


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def process_env(process_id: int, num_processes: int, port: int, devices: int,
                base: dict | None = None) -> dict:
  """The environment of local process `process_id` (CPU devices, coordinator, its id)."""
  env = dict(os.environ if base is None else base)
  flags = env.get('XLA_FLAGS', '')
  flags = ' '.join(f for f in flags.split() if 'xla_force_host_platform_device_count' not in f)
  env.update({
      'JAX_PLATFORMS': env.get('JAX_PLATFORMS', 'cpu'),
      'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count={devices}'.strip(),
      'JAX_COORDINATOR_ADDRESS': f'localhost:{port}',
      'JAX_NUM_PROCESSES': str(num_processes),
      'JAX_PROCESS_ID': str(process_id),
      'PYTHONPATH': os.pathsep.join(p for p in (str(ROOT), env.get('PYTHONPATH')) if p),
  })
  return env


def _workdir(args: list[str]) -> pathlib.Path | None:
  for a in args:
    if a.startswith('--workdir='):
      return pathlib.Path(a.split('=', 1)[1])
  return None


def launch(module: str, args: list[str], processes: int, devices_per_process: int,
           log_dir: pathlib.Path | None = None, echo: bool = True) -> int:
  port = free_port()
  args = list(args)
  if not any(a.startswith('--config.distributed') for a in args):
    args.append('--config.distributed=True')
  log_dir = log_dir or _workdir(args) or pathlib.Path('.')
  log_dir.mkdir(parents=True, exist_ok=True)
  procs, logs = [], []
  for i in range(processes):
    log = open(log_dir / f'process_{i}.log', 'w')  # pylint: disable=consider-using-with
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, '-m', module] + args, cwd=ROOT,
        env=process_env(i, processes, port, devices_per_process),
        stdout=subprocess.PIPE if (echo and i == 0) else log, stderr=subprocess.STDOUT,
        text=True))
  if echo:  # process 0 to the terminal and its log
    def pump(stream, log):
      for line in stream:
        sys.stderr.write(line)
        log.write(line)
        log.flush()
    threading.Thread(target=pump, args=(procs[0].stdout, logs[0]), daemon=True).start()

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    codes = _wait_all(procs)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    for log in logs:
      log.close()
  failed = [c for c in codes if c not in (0, INTERRUPTED)]
  if failed:
    return failed[0] if failed[0] > 0 else 128 - failed[0]  # killed by signal N: 128 + N
  return INTERRUPTED if INTERRUPTED in codes else 0


def _wait_all(procs) -> list[int]:
  """Waits for every process; once one fails (an exit code other than 0 and 130, the code of
  a run that saved and stopped), the others get SIGTERM, then SIGKILL."""
  deadline = None
  while True:
    codes = [p.poll() for p in procs]
    if all(c is not None for c in codes):
      return codes
    if deadline is None and any(c not in (None, 0, INTERRUPTED) for c in codes):
      for p in procs:
        if p.poll() is None:
          p.terminate()
      deadline = time.time() + 30
    if deadline is not None and time.time() > deadline:
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=2)
  parser.add_argument('--module', default='cnn_jax.main',
                      help='Entry point run in every process (python -m MODULE).')
  parser.add_argument('args', nargs=argparse.REMAINDER,
                      help='Arguments of the entry point, after --.')
  ns = parser.parse_args(argv)
  args = ns.args[1:] if ns.args[:1] == ['--'] else ns.args
  return launch(ns.module, args, ns.processes, ns.devices_per_process)


if __name__ == '__main__':
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.start()  # first: may restart the program, then sets XLA up
  sys.exit(main())
