"""What the lecture experiments' runs recorded, read back: a finished run's results.json, the
host and load its runs trained on and the sentences a report says them in, and the JSON and CSV
files of per-run records that a committed report is recomputed from.
"""
from __future__ import annotations

import collections
import csv
import json
import math
import pathlib

from cnn_jax import sweep

# The experiment's clock (experiments.lecture_common.Clock), kept beside its runs.
CLOCK_FILE = 'experiment_clock.json'


def read_results(run_dir: pathlib.Path) -> dict | None:
  """A finished run's results.json; None while it is not finished."""
  return json.loads((run_dir / 'results.json').read_text()) if sweep.is_done(run_dir) else None


def stat(values) -> dict:
  """{'mean', 'std'} with the sample standard deviation (nan for a single value)."""
  values = [float(v) for v in values]
  if not values:
    return {'mean': math.nan, 'std': math.nan}
  mean = sum(values) / len(values)
  std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
         if len(values) > 1 else math.nan)
  return {'mean': mean, 'std': std}


def run_record(run_dir: pathlib.Path) -> dict | None:
  """A finished run's results.json; None while it is unfinished. An older run, whose
  results.json has no load, has it in the clock its experiment kept beside it (CLOCK_FILE):
  its load_average_start and cpu_count are taken from there."""
  results = read_results(run_dir)
  clock = pathlib.Path(run_dir) / CLOCK_FILE
  if results is None or results.get('load_average_start') is not None or not clock.exists():
    return results
  older = read_json(clock)
  if older.get('load_average_start') is None:
    return results
  return {**results, 'load_average_start': older['load_average_start'],
          'cpu_count': older['cpu_count']}


def run_records(run_dirs) -> dict[str, dict]:
  """{directory name: `run_record`} of the finished runs in `run_dirs` (a name met twice: the
  whole path)."""
  records = {}
  for run_dir in map(pathlib.Path, run_dirs):
    record = run_record(run_dir)
    if record is not None:
      records[str(run_dir) if run_dir.name in records else run_dir.name] = record
  return records


def runs_facts(run_dirs) -> dict:
  """What the finished runs in `run_dirs` recorded of the machine they trained on:
  {'runs_load': `load_record`, 'runs_host': `host_record`} of their `run_records`."""
  records = run_records(run_dirs)
  return {'runs_load': load_record(records), 'runs_host': host_record(records)}


def runs_load(run_dirs) -> dict:
  """`load_record` of the finished runs in `run_dirs`."""
  return load_record(run_records(run_dirs))


def load_record(records: dict[str, dict] | None) -> dict:
  """What the runs' records ({run: results.json}, `run_records`; None: the runs are not known)
  say of the machine's load: cnn_jax.train writes the 1-minute load average at the start of a
  run's (last) sitting and the host's cores into its results.json. {'runs': the runs (None: not
  known), 'recorded': how many recorded the load, and where any did: 'load_average_start' and
  'cpu_count' as [lowest, highest], 'busy': the runs that started above half their cores}."""
  loads = [(name, r['load_average_start'], r['cpu_count']) for name, r in (records or {}).items()
           if r.get('load_average_start') is not None]
  runs = None if records is None else len(records)
  if not loads:
    return {'runs': runs, 'recorded': 0}
  starts, cores = [l for _, l, _ in loads], [c for _, _, c in loads]
  return {'runs': runs, 'recorded': len(loads), 'load_average_start': [min(starts), max(starts)],
          'cpu_count': [min(cores), max(cores)],
          'busy': [name for name, load, n in loads if load > 0.5 * n]}


def host_record(records: dict[str, dict] | None) -> dict:
  """What the runs' records ({run: results.json}; None: the runs are not known) say of where
  they trained: cnn_jax.train writes host_cpu, platform, device_kind and device_count.
  {'runs': the runs (None: not known), 'recorded': how many name their host CPU, 'hosts' and
  'devices': {name: runs}}."""
  hosts, devices = collections.Counter(), collections.Counter()
  for r in (records or {}).values():
    if r.get('host_cpu'):
      hosts[r['host_cpu']] += 1
    if r.get('device_kind'):
      kind = f"{r['platform']}:{r['device_kind']}" if r.get('platform') else r['device_kind']
      devices[f"{r.get('device_count', '?')} x {kind}"] += 1
  return {'runs': None if records is None else len(records), 'recorded': sum(hosts.values()),
          'hosts': dict(sorted(hosts.items())), 'devices': dict(sorted(devices.items()))}


def machine_note(host: dict, committed: bool = False) -> str:
  """The device and host CPU the runs recorded (`host_record`), e.g. '1 x cpu:cpu, host CPU AMD
  EPYC (2 cores, AVX-512)', never the report process's. `committed`: the records are those a
  report commits, so a run without one may have recorded its host where it trained."""
  if not host['recorded']:
    return 'device and host CPU ' + _unrecorded(host, committed)
  devices = _counted(host['devices'])
  return (f'{devices}, ' if devices else '') + 'host CPU ' + host_note(host, committed)


def host_note(host: dict, committed: bool = False) -> str:
  """The host CPU the runs recorded (`host_record`); where they differ, each with its runs; and
  how many did not record it (`committed`: have no committed record of it)."""
  if not host['recorded']:
    return _unrecorded(host, committed)
  text, runs, recorded = _counted(host['hosts']), host['runs'], host['recorded']
  if runs > recorded:
    text += (f' (no committed record of it for {runs - recorded} of the {runs} runs)' if committed
             else f' ({runs - recorded} of the {runs} runs did not record it)')
  return text


def _unrecorded(host: dict, committed: bool) -> str:
  if host['runs'] == 0:
    return 'not recorded (no run finished)'
  if committed:
    return "in none of the runs' committed records"
  return f"not recorded by the run{'' if host['runs'] == 1 else 's'}"


def _counted(counts: dict) -> str:
  """'A' for one name; 'A (2 runs) and B (1 run)' for several."""
  items = [name if len(counts) == 1 else f"{name} ({n} run{'s' if n > 1 else ''})"
           for name, n in counts.items()]
  return ' and '.join([', '.join(items[:-1]), items[-1]] if len(items) > 2 else items)


def busy_note(load: dict) -> str:
  """A sentence that says whether the runs trained on a busy machine, i.e. whether their wall
  times are speed figures, from their own records (`load_record`). The load at a run's start:
  by its end the 1-minute average counts the run itself."""
  runs, recorded = load['runs'], load['recorded']
  if not recorded:
    if runs == 0:
      return "No run trained, so none recorded the machine's load."
    who = 'The runs' if runs is None else 'The run' if runs == 1 else f'The {runs} runs'
    return (f"{who} did not record the machine's load (made before cnn_jax.train recorded it): "
            'whether another job ran is not known.')
  where = (f"1-minute load average {_span(load['load_average_start'], '{:.1f}')} at the start "
           f"of {'the run' if recorded == 1 else f'the {recorded} runs'}, on "
           f"{_span(load['cpu_count'], '{}')} cores"
           + (f' ({runs - recorded} of the {runs} runs did not record it)' if recorded < runs
              else ''))
  busy = load['busy']
  if not busy:
    return f'Trained on an otherwise idle machine: {where}.'
  if len(busy) == recorded:
    return f'Trained while another job ran: {where}; the wall times are not a speed figure.'
  return (f"Not idle throughout: {where}; {', '.join(busy)} started above half the cores, while "
          'another job ran or just after a run of this experiment (the 1-minute average still '
          f"counts it), so {'its wall time is' if len(busy) == 1 else 'their wall times are'} "
          'not a speed figure.')


def _span(low_high, fmt: str) -> str:
  """'0.3 to 1.2', or '0.3' when both ends print alike."""
  low, high = (fmt.format(v) for v in low_high)
  return low if low == high else f'{low} to {high}'


def write_json(path: pathlib.Path, data: dict) -> None:
  path.write_text(json.dumps(data, indent=2, default=float) + '\n')


# ---------------------------------------------------------- a committed report, computed again


def read_json(path: pathlib.Path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def write_csv(path: pathlib.Path, columns: list[str], rows) -> None:
  """A CSV of per-run records: `columns`, then `rows` (None as an empty cell; floats exactly)."""
  with pathlib.Path(path).open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(['' if v is None else v for v in row] for row in rows)


def read_csv(path: pathlib.Path) -> list[dict]:
  """A CSV of per-run records (a sweep's members.csv, `write_csv`'s files), a dict a row:
  numbers as numbers, empty cells as None."""
  def value(text: str):
    if text == '':
      return None
    try:
      return int(text)
    except ValueError:
      try:
        return float(text)
      except ValueError:
        return text
  with pathlib.Path(path).open(newline='') as f:
    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]
