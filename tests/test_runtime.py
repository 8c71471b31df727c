"""cnn_jax.runtime: the one reader of the project's environment variables; the process-wide XLA,
JAX and allocator settings an entry point applies, and the user's way to override them."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROBE = """
import json, os
from cnn_jax import runtime
runtime.configure()
import jax
print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''),
                  'cache_dir': jax.config.jax_compilation_cache_dir,
                  'min_compile_secs': jax.config.jax_persistent_cache_min_compile_time_secs}))
"""


def _probe(tmp_path, **env_extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR', 'CNN_JAX_XLA_DEFAULTS',
                      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS')}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CNN_JAX_CACHE_DIR=str(tmp_path), **env_extra)
  out = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_set_the_cpu_flags_and_a_project_compilation_cache(tmp_path):
  from cnn_jax import runtime
  got = _probe(tmp_path)
  if runtime._jaxlib_version() >= runtime.MIN_JAXLIB:
    assert all(flag in got['xla_flags'] for flag in runtime.CPU_FLAGS)
  assert got['cache_dir'] == str(tmp_path / 'jax')
  assert got['min_compile_secs'] == pytest.approx(float(runtime.CACHE_MIN_COMPILE_SECS))


def test_cpu_flags_add_elementwise_fusions_where_the_kernels_will_not_run(monkeypatch):
  from cnn_jax import runtime
  monkeypatch.delenv('CNN_JAX_CPU_KERNELS', raising=False)
  assert runtime.cpu_flags('') == runtime.CPU_FLAGS
  assert runtime.cpu_flags('--xla_force_host_platform_device_count=1') == runtime.CPU_FLAGS
  assert (runtime.cpu_flags('--xla_force_host_platform_device_count=4')
          == runtime.CPU_FLAGS_XLA_OPS)
  monkeypatch.setenv('CNN_JAX_CPU_KERNELS', '0')
  assert runtime.cpu_flags('') == runtime.CPU_FLAGS_XLA_OPS
  assert 'eltwise' in runtime.CPU_FLAGS_XLA_OPS[0] and 'eltwise' not in runtime.CPU_FLAGS[0]


def test_the_users_settings_win_and_the_defaults_can_be_turned_off(tmp_path):
  flag = '--xla_cpu_experimental_ynn_fusion_type=dot'
  got = _probe(tmp_path, XLA_FLAGS=flag, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='2.5',
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'mine'))
  assert got['xla_flags'] == flag  # a flag of the same name: the project adds nothing
  assert got['cache_dir'] == str(tmp_path / 'mine')
  assert got['min_compile_secs'] == 2.5
  off = _probe(tmp_path, CNN_JAX_XLA_DEFAULTS='0')
  assert off['xla_flags'] == '' and off['cache_dir'] in (None, '')
  assert off['min_compile_secs'] == 1.0  # JAX's own default


RESTART = """
import os, sys
show = lambda: ' '.join(os.environ.get(k, '-') for k in ('GLIBC_TUNABLES', 'LD_PRELOAD'))
print('start', show(), sys.argv[1:], flush=True)
from cnn_jax import runtime
runtime.restart_with_fast_malloc()
print('running', show(), sys.argv[1:])
"""
MALLOC_KEYS = ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF', 'CNN_JAX_MALLOC',
               'CNN_JAX_XLA_DEFAULTS')


def _restart(tmp_path, env_extra):
  script = tmp_path / 'entry.py'
  script.write_text(RESTART)
  env = {k: v for k, v in os.environ.items() if k not in MALLOC_KEYS}
  env.update(PYTHONPATH=ROOT, **env_extra)
  return subprocess.run([sys.executable, str(script), '--flag', 'a b'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc tunables are Linux')
@pytest.mark.parametrize('env_extra,restarts', [
    ({'CNN_JAX_MALLOC': 'glibc'}, 'glibc'),
    ({'CNN_JAX_MALLOC': 'glibc', 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'glibc'),
    ({'CNN_JAX_MALLOC': 'glibc', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, None),
    ({}, 'auto'), ({'CNN_JAX_MALLOC': 'jemalloc'}, 'jemalloc'),
    ({'LD_PRELOAD': '/opt/libtcmalloc.so'}, None),
    ({'CNN_JAX_MALLOC': 'system'}, None), ({'CNN_JAX_XLA_DEFAULTS': '0'}, None)])
def test_entry_points_restart_once_on_the_fast_allocator(tmp_path, env_extra, restarts):
  from cnn_jax import runtime
  jemalloc, mimalloc = runtime.find_jemalloc(), runtime.find_mimalloc()
  if restarts == 'jemalloc' and not jemalloc:
    pytest.skip('no libjemalloc.so.2 here')
  if restarts == 'auto':
    restarts = 'mimalloc' if mimalloc else 'jemalloc' if jemalloc else 'glibc'
  if restarts == 'glibc' and not runtime._glibc_at_least(2, 35):
    pytest.skip('glibc older than 2.35 has no glibc.malloc.hugetlb')
  out = _restart(tmp_path, env_extra)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  tunables = env_extra.get('GLIBC_TUNABLES', '')
  before = f"{tunables or '-'} {env_extra.get('LD_PRELOAD', '-')}"
  if restarts is None:
    assert lines == [f"start {before} ['--flag', 'a b']", f"running {before} ['--flag', 'a b']"]
    return
  if restarts == 'glibc':  # the program ran again from the start, same arguments, tunable added
    want = ':'.join(filter(None, [tunables, runtime.HUGE_PAGES_TUNABLE])) + ' -'
  else:
    want = f'{tunables or "-"} {mimalloc if restarts == "mimalloc" else jemalloc}'
  assert lines == [f"start {before} ['--flag', 'a b']", f"start {want} ['--flag', 'a b']",
                   f"running {want} ['--flag', 'a b']"]


def test_malloc_choice_errors_name_the_fix(tmp_path, monkeypatch):
  from cnn_jax import runtime
  monkeypatch.setenv('CNN_JAX_MALLOC', 'tcmalloc')
  with pytest.raises(ValueError, match='CNN_JAX_MALLOC=.tcmalloc. is not one of auto, jemalloc'):
    runtime.malloc_choice()
  monkeypatch.setattr(runtime, 'MIMALLOC_DIST', 'no-such-distribution')
  with pytest.raises(RuntimeError, match='pip install no-such-distribution'):
    runtime.malloc_env('mimalloc', {})
  monkeypatch.setattr(runtime, 'JEMALLOC_DIRS', (str(tmp_path),))
  with pytest.raises(RuntimeError, match='apt-get install libjemalloc2'):
    runtime.malloc_env('jemalloc', {})
  monkeypatch.setattr(runtime, 'find_mimalloc', lambda: None)  # auto without the wheel
  assert runtime.malloc_env('auto', {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}) is None
  (tmp_path / 'libjemalloc.so.2').write_bytes(b'')
  assert runtime.malloc_env('auto', {}) == {'LD_PRELOAD': str(tmp_path / 'libjemalloc.so.2'),
                                              'MALLOC_CONF': runtime.JEMALLOC_CONF}


def test_mimalloc_comes_from_its_wheel_with_freed_pages_kept(monkeypatch):
  from cnn_jax import runtime
  monkeypatch.setattr(runtime, 'find_mimalloc', lambda: '/venv/cmeel.prefix/lib/libmimalloc.so.3')
  assert runtime.malloc_env('mimalloc', {'LD_PRELOAD': '/x/libfoo.so'}) == {
      'LD_PRELOAD': '/venv/cmeel.prefix/lib/libmimalloc.so.3:/x/libfoo.so',
      'MIMALLOC_PURGE_DELAY': '-1'}
  assert runtime.malloc_env('mimalloc', {'MIMALLOC_PURGE_DELAY': '10'})['MIMALLOC_PURGE_DELAY'] == '10'
  assert runtime.malloc_env('auto', {})['LD_PRELOAD'].endswith('libmimalloc.so.3')  # first choice
  assert runtime.malloc_env('auto', {'LD_PRELOAD': '/lib/libmimalloc.so'}) is None  # the user's
  child = runtime.with_malloc('glibc', {'LD_PRELOAD': '/venv/libmimalloc.so.3'})
  assert 'LD_PRELOAD' not in child


def test_with_malloc_swaps_the_allocator_of_a_child(tmp_path, monkeypatch):
  from cnn_jax import runtime
  monkeypatch.setattr(runtime, 'JEMALLOC_DIRS', (str(tmp_path),))
  (tmp_path / 'libjemalloc.so.2').write_bytes(b'')
  jemalloc = runtime.with_malloc('jemalloc', {'GLIBC_TUNABLES': 'a=1:glibc.malloc.hugetlb=1',
                                                'LD_PRELOAD': '/x/libfoo.so', 'PATH': '/bin'})
  assert jemalloc == {'GLIBC_TUNABLES': 'a=1', 'PATH': '/bin', 'CNN_JAX_MALLOC': 'jemalloc',
                      'LD_PRELOAD': f'{tmp_path}/libjemalloc.so.2:/x/libfoo.so',
                      'MALLOC_CONF': runtime.JEMALLOC_CONF}
  system = runtime.with_malloc('system', jemalloc)
  assert system == {'GLIBC_TUNABLES': 'a=1', 'PATH': '/bin', 'CNN_JAX_MALLOC': 'system',
                    'LD_PRELOAD': '/x/libfoo.so'}
  for env, want in ((jemalloc, f'jemalloc ({runtime.JEMALLOC_CONF})'), (system, 'system'),
                    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, 'glibc, huge pages')):
    monkeypatch.setattr(os, 'environ', env)
    assert runtime.current_malloc() == want


def test_a_bad_malloc_choice_stops_the_program_with_the_fix(tmp_path):
  out = _restart(tmp_path, {'CNN_JAX_MALLOC': 'bogus'})
  assert out.returncode == 1
  assert "error: CNN_JAX_MALLOC='bogus' is not one of auto, jemalloc, mimalloc, glibc, system" in out.stderr
  assert 'running' not in out.stdout and 'Traceback' not in out.stderr


def test_importing_cnn_jax_changes_nothing(tmp_path):
  script = """
import json, os, sys
# The libraries' own import-time defaults first (orbax/tensorstore, jax and tensorboard set a few
# variables of their own): what is compared is what cnn_jax's import adds.
import flax, jax, optax, orbax.checkpoint, tensorboardX
before = dict(os.environ)
import cnn_jax, cnn_jax.train, cnn_jax.models, cnn_jax.runtime
print(json.dumps({'same_env': dict(os.environ) == before,
                  'cache_dir': jax.config.jax_compilation_cache_dir,
                  'configured': cnn_jax.runtime.applied()['runtime_configured']}))
"""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_COMPILATION_CACHE_DIR')}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, CNN_JAX_CACHE_DIR=str(tmp_path))
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got == {'same_env': True, 'cache_dir': None, 'configured': False}


def test_configure_after_the_backend_started_is_an_error(tmp_path):
  script = ("import jax; jax.devices(); from cnn_jax import runtime; runtime.configure()")
  env = {k: v for k, v in os.environ.items() if k != 'CNN_JAX_XLA_DEFAULTS'}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode != 0 and 'must run before JAX starts its backend' in out.stderr


def test_applied_names_what_the_process_runs_with():
  from cnn_jax import runtime
  got = runtime.applied()  # the test process: configured by conftest
  assert got['runtime_configured'] and got['cpu_threads'] >= 1
  assert set(got) >= {'xla_flags', 'user_xla_flags', 'malloc', 'cpu_kernels_default',
                      'compilation_cache'}


def test_records_write_the_home_folder_as_a_tilde(monkeypatch, tmp_path):
  from cnn_jax import runtime
  home = tmp_path / 'researcher'
  monkeypatch.setenv('HOME', str(home))
  assert runtime.home_relative(str(home / '.cache/cnn_jax/jax')) == '~/.cache/cnn_jax/jax'
  sibling = str(tmp_path / 'researcher2' / 'cache')  # a prefix of the name is not the home folder
  assert runtime.home_relative(sibling) == sibling
  elsewhere = str(tmp_path / 'scratch' / 'cache')
  assert runtime.home_relative(elsewhere) == elsewhere


@pytest.mark.parametrize('name,value,message', [
    ('CNN_JAX_XLA_DEFAULTS', 'no', r"CNN_JAX_XLA_DEFAULTS='no': use 1"),
    ('CNN_JAX_SYNC_TIMEOUT_S', '1h', r"CNN_JAX_SYNC_TIMEOUT_S='1h': give a positive number"),
    ('CNN_JAX_CPU_KERNELS', 'conv', r"CNN_JAX_CPU_KERNELS='conv' names unknown kernels"),
    ('CNN_JAX_CONV_KERNEL_GRADIENT', 'xla', r"CNN_JAX_CONV_KERNEL_GRADIENT='xla': use one of"),
    ('CNN_JAX_CONV_WINOGRAD', 'yes', r"CNN_JAX_CONV_WINOGRAD='yes': use 1 .* or 0"),
    ('JAX_NUM_PROCESSES', 'two', r'JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers'),
])
def test_each_variable_is_parsed_with_an_error_naming_the_fix(monkeypatch, name, value, message):
  from cnn_jax import runtime
  monkeypatch.setenv(name, value)
  parse = {'CNN_JAX_XLA_DEFAULTS': runtime.xla_defaults_on,
           'CNN_JAX_SYNC_TIMEOUT_S': runtime.sync_timeout_ms,
           'CNN_JAX_CPU_KERNELS': runtime.cpu_kernels_default,
           'CNN_JAX_CONV_KERNEL_GRADIENT': runtime.conv_kernel_gradient,
           'CNN_JAX_CONV_WINOGRAD': runtime.conv_winograd,
           'JAX_NUM_PROCESSES': runtime.cluster}[name]
  with pytest.raises(ValueError, match=message):
    parse()


def test_a_bad_variable_stops_the_program_with_one_line(tmp_path):
  script = 'from cnn_jax import runtime; runtime.start(); print("started")'
  env = {**os.environ, 'PYTHONPATH': ROOT, 'CNN_JAX_CPU_KERNELS': 'conv3d'}
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 1 and 'started' not in out.stdout
  assert out.stderr.strip().splitlines() == [
      "error: CNN_JAX_CPU_KERNELS='conv3d' names unknown kernels ['conv3d']; use 1 (all), 0 "
      "(none) or a comma list of ['conv2d', 'batch_norm']."]
