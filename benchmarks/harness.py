"""The benchmarks' one child-process harness: every timing runs in a fresh process of its own.

A `Child` names a function of a benchmark module, its keyword arguments and the environment it
runs under (variables over the parent's, an allocator). The parent starts it as

    python -m benchmarks.harness --call=MODULE:FUNCTION --kwargs=JSON [--serve]

which goes through `cnn_jax.runtime.start()` first (the child's own XLA flags, allocator restart),
like every entry point. Two ways to run one:
* `call(child)`: the function runs once; its JSON-able result comes back (`fresh_rounds` repeats
  that for several children, round by round). Used where the process itself is the variable
  (XLA flags, allocator) and for in-process comparisons that must not share the parent's state.
* `interleaved(children, rounds)`: each child's function builds a timer (an object with
  `step()`, optionally `loop()`, `summary()` and `close()`, e.g. benchmarks.train_step.JaxBench),
  which `serve` runs behind a line protocol on stdin/stdout. The parent starts every child (each
  compiles and calibrates alone), then asks them for timing windows in turns (`turns`): every
  round one window of each, in reverse order every other round. The machines this runs on vary
  by 10-30% from minute to minute; taking turns puts a slow spell on every contender alike, and
  `paired_ratio` compares two contenders round by round.
`run` is the one `subprocess.run` under all of it (suite_cache runs pytest through it), and
`child_env` the one rule for a child's environment.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from cnn_jax import runtime

REPLY = '@@ '  # marks a child's answers on its stdout (anything else there is ignored)
GAP_S = 0.2  # idle between two windows, so that one child's spinning threads settle


class ChildFailed(RuntimeError):
  """A child exited without its answer; `tail` holds the last lines of its stderr."""

  def __init__(self, message: str, tail: list[str] = ()):
    super().__init__(f'{message}: {list(tail)}')
    self.tail = list(tail)


def target_of(fn: Callable) -> str:
  """'module:qualname' of a function or class, importable by a child (a module run as
  `python -m pkg.mod` is named by its import name, not '__main__')."""
  module = fn.__module__
  if module == '__main__':
    spec = getattr(sys.modules['__main__'], '__spec__', None)
    if spec is None:
      raise ValueError(f'{fn.__qualname__} lives in a script: start its program with -m.')
    module = spec.name
  return f'{module}:{fn.__qualname__}'


@dataclasses.dataclass
class Child:
  """A function (or a timer's factory, for `interleaved`) to run in a fresh process:
  `target` 'module:function', its JSON-able `kwargs`, environment variables `env` over the
  parent's (see `child_env`) and the allocator `malloc` it starts on (runtime.MALLOC_CHOICES;
  None: the parent's)."""
  target: str
  kwargs: dict = dataclasses.field(default_factory=dict)
  env: dict = dataclasses.field(default_factory=dict)
  malloc: str | None = None
  command: list[str] | None = None  # instead of target: python's arguments, run in `cwd`
  cwd: str | None = None  # e.g. another commit's checkout, whose own code the child runs

  @classmethod
  def of(cls, fn: Callable, env: dict | None = None, malloc: str | None = None, **kwargs):
    return cls(target_of(fn), kwargs, dict(env or {}), malloc)

  def argv(self, serve: bool = False) -> list[str]:
    if self.command:
      return [sys.executable, *self.command]
    return ([sys.executable, '-m', 'benchmarks.harness', f'--call={self.target}',
             f'--kwargs={json.dumps(self.kwargs)}'] + (['--serve'] if serve else []))

  def describe(self) -> str:
    if self.command:
      return f"{' '.join(self.command)} in {self.cwd}"
    return f"{self.target}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


def child_env(env_extra: dict | None = None, malloc: str | None = None) -> dict:
  """A child's environment: this one, the user's own XLA_FLAGS (not the project's, which the
  child adds itself unless `env_extra` turns them off or sets its own), `env_extra`; on
  allocator `malloc` where given, on the system's where `env_extra` turns the project's settings
  off (CNN_JAX_XLA_DEFAULTS=0, as runtime.malloc_choice says), else on this process's."""
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  user_flags = runtime.user_xla_flags()  # this process's before runtime.start() added the project's
  if user_flags:
    env['XLA_FLAGS'] = user_flags
  env.update(env_extra or {})
  if malloc is None and env.get('CNN_JAX_XLA_DEFAULTS') == '0':
    malloc = 'system'
  return runtime.with_malloc(malloc, env) if malloc else env


def run(argv: list[str], env_extra: dict | None = None, malloc: str | None = None,
        timeout: float | None = None, cwd=None) -> subprocess.CompletedProcess:
  """Runs `argv` to its end under `child_env`, its output captured; TimeoutExpired past
  `timeout` seconds (the child killed)."""
  return subprocess.run(argv, env=child_env(env_extra, malloc), capture_output=True, text=True,
                        check=False, timeout=timeout, cwd=cwd)


def _replies(stdout: str) -> list:
  return [json.loads(line[len(REPLY):]) for line in stdout.splitlines() if line.startswith(REPLY)]


def call(child: Child, timeout: float | None = None) -> Any:
  """`child`'s function's result, run once in a fresh process; None where it runs past
  `timeout` seconds; ChildFailed where it fails."""
  try:
    out = run(child.argv(), child.env, child.malloc, timeout, cwd=child.cwd)
  except subprocess.TimeoutExpired:
    return None
  replies = _replies(out.stdout)
  if out.returncode or not replies:
    raise ChildFailed(f'{child.describe()}: exited with {out.returncode}',
                      out.stderr.strip().splitlines()[-3:])
  return replies[-1]


def turns(labels: list[str], rounds: int, alternate: bool = True) -> list[tuple[int, str]]:
  """(round, label) in the order the rounds take them: every label once a round, in reverse
  order every other round where `alternate` (so that no contender always follows the same one)."""
  labels = list(labels)
  return [(r, label) for r in range(rounds)
          for label in (labels[::-1] if alternate and r % 2 else labels)]


def fresh_rounds(children: dict[str, Child], rounds: int) -> dict[str, list]:
  """label -> every round's result of its child, each run a fresh process (`call`), the rounds
  taking the children in the same order."""
  out = {label: [] for label in children}
  for _, label in turns(children, rounds, alternate=False):
    out[label].append(call(children[label]))
  return out


def alternating(labels: list[str], rounds: int, measure: Callable[[str], Any]) -> dict[str, list]:
  """label -> `measure(label)` of every round, the labels taking turns in this process."""
  out = {label: [] for label in labels}
  for _, label in turns(labels, rounds, alternate=False):
    out[label].append(measure(label))
  return out


def serve(bench) -> None:
  """The served child's side (module docstring): reads `step`, `loop` or `done` lines from
  stdin and answers each with one JSON line (images/s; for `done`, the summary) on stdout."""
  print(REPLY + json.dumps({'ready': True, 'steps_per_window': bench.n}), flush=True)
  try:
    for line in sys.stdin:
      command = line.strip()
      if command == 'done':
        break
      print(REPLY + json.dumps({'images_per_s': getattr(bench, command)()}), flush=True)
  finally:
    bench.close()
  print(REPLY + json.dumps(bench.summary()), flush=True)


class ServedChild:
  """A served child process: started, compiled and calibrated on construction; `ask('step' |
  'loop')` times one window, `finish()` returns its summary, `kill()` ends it."""

  def __init__(self, label: str, child: Child):
    self.label = f'{label} ({child.describe()})'
    self._log = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen(child.argv(serve=True), env=child_env(child.env, child.malloc),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._log, text=True, cwd=child.cwd)
    self.ready = self._read()

  def _read(self) -> dict:
    for line in self._proc.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    self._proc.wait()
    self._log.seek(0)
    tail = self._log.read().strip().splitlines()[-3:]
    raise ChildFailed(f'{self.label}: exited with {self._proc.returncode}', tail)

  def _send(self, command: str) -> dict:
    self._proc.stdin.write(command + '\n')
    self._proc.stdin.flush()
    return self._read()

  def ask(self, command: str) -> float:
    return self._send(command)['images_per_s']

  def finish(self) -> dict:
    summary = self._send('done')
    self._proc.wait()
    return summary

  def kill(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


def _start_all(children: dict[str, Child], start: Callable) -> dict:
  """label -> started child, one after another; a child that fails is left out (said on stderr)."""
  served = {}
  for label, child in children.items():
    try:
      served[label] = start(label, child)
    except ChildFailed as e:
      print(f'# {e}', file=sys.stderr, flush=True)
  return served


def _take_turns(served: dict, rounds: int, loop_of: str | None, gap_s: float) -> tuple[dict, list]:
  """The rounds of windows (`turns`): per label its step windows' images/s, and the loop
  windows of `loop_of` (each right after its step window); a child that fails drops out."""
  windows, loops = {label: [] for label in served}, []
  for _, label in turns(served, rounds):
    if label not in served:  # failed in an earlier round
      continue
    try:
      windows[label].append(served[label].ask('step'))
      time.sleep(gap_s)
      if label == loop_of:
        loops.append(served[label].ask('loop'))
        time.sleep(gap_s)
    except ChildFailed as e:
      print(f'# {e}', file=sys.stderr, flush=True)
      served.pop(label).kill()
      windows.pop(label)
  return windows, loops


def interleaved(children: dict[str, Child], rounds: int, loop_of: str | None = None,
                gap_s: float = GAP_S, start: Callable = ServedChild) -> tuple[dict, dict]:
  """Starts every child (label -> Child of a timer's factory), then times their windows in turns
  for `rounds` rounds (module docstring), the `loop_of` child's loop window right after its step
  window. Returns (results, windows): per label the median images/s, every window's figure
  ('runs') and the child's summary, None for a child that failed (the others go on); and per
  label that finished, its windows' images/s. `start(label, child)` starts one (a test's fake)."""
  served = _start_all(children, start)
  try:
    windows, loops = _take_turns(served, rounds, loop_of, gap_s)
    summaries = {label: child.finish() for label, child in served.items()}
  finally:
    for child in served.values():
      child.kill()
  out = {label: None for label in children}
  for label, summary in summaries.items():
    ips = windows[label]
    out[label] = {**summary, 'images_per_s': statistics.median(ips), 'runs': ips}
    if label == loop_of and loops:
      out[label].update(loop_images_per_s=statistics.median(loops), loop_windows=loops,
                        loop_over_step=statistics.median(l / s for l, s in zip(loops, ips)))
  return out, windows


def paired_ratio(a: list[float] | None, b: list[float] | None) -> float | None:
  """The median of the rounds' a / b ratios (windows of one round are minutes apart at most)."""
  if not a or not b:
    return None
  return statistics.median(x / y for x, y in zip(a, b))


def resolve(target: str) -> Callable:
  module, _, name = target.partition(':')
  obj = importlib.import_module(module)
  for part in name.split('.'):
    obj = getattr(obj, part)
  return obj


def main(argv: list[str] | None = None) -> None:
  """The child's side: runs --call with --kwargs and prints its result, or serves the timer it
  builds (--serve)."""
  parser = argparse.ArgumentParser(description='A benchmark child process (benchmarks.harness).')
  parser.add_argument('--call', required=True, help='module:function')
  parser.add_argument('--kwargs', default='{}', help='its keyword arguments, as JSON')
  parser.add_argument('--serve', action='store_true',
                      help='the function builds a timer: serve its windows on stdin/stdout')
  args = parser.parse_args(argv)
  result = resolve(args.call)(**json.loads(args.kwargs))
  if args.serve:
    serve(result)
  else:
    print(REPLY + json.dumps(result), flush=True)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
