"""cnn_jax.xla_setup: the process-wide XLA and JAX defaults, and the user's way to override them."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

PROBE = """
import json, os, cnn_jax, jax
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
  from cnn_jax import xla_setup
  got = _probe(tmp_path)
  if xla_setup._jaxlib_version() >= xla_setup.MIN_JAXLIB:
    assert all(flag in got['xla_flags'] for flag in xla_setup.CPU_FLAGS)
  assert got['cache_dir'] == str(tmp_path / 'jax')
  assert got['min_compile_secs'] == pytest.approx(float(xla_setup.CACHE_MIN_COMPILE_SECS))


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
print('start', os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], flush=True)
from cnn_jax import xla_setup
xla_setup.restart_with_huge_pages()
print('running', os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc tunables are Linux')
@pytest.mark.parametrize('env_extra,restarts', [
    ({}, True), ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, True),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, False), ({'CNN_JAX_HUGE_PAGES': '0'}, False),
    ({'CNN_JAX_XLA_DEFAULTS': '0'}, False)])
def test_entry_points_restart_once_on_huge_pages(tmp_path, env_extra, restarts):
  from cnn_jax import xla_setup
  if not xla_setup._glibc_at_least(2, 35):
    pytest.skip('glibc older than 2.35 has no glibc.malloc.hugetlb')
  script = tmp_path / 'entry.py'
  script.write_text(RESTART)
  env = {k: v for k, v in os.environ.items()
         if k not in ('GLIBC_TUNABLES', 'CNN_JAX_HUGE_PAGES', 'CNN_JAX_XLA_DEFAULTS')}
  env.update(PYTHONPATH=ROOT, **env_extra)
  out = subprocess.run([sys.executable, str(script), '--flag', 'a b'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  lines = out.stdout.splitlines()
  before = env_extra.get('GLIBC_TUNABLES', '')
  if restarts:  # the program ran again from the start, same arguments, tunable added once
    want = ':'.join(filter(None, [before, xla_setup.HUGE_PAGES_TUNABLE]))
    assert lines == [f"start {before} ['--flag', 'a b']", f"start {want} ['--flag', 'a b']",
                     f"running {want} ['--flag', 'a b']"]
  else:
    assert lines == [f"start {before} ['--flag', 'a b']", f"running {before} ['--flag', 'a b']"]
