"""cnn_jax.precision: bfloat16 only where detected, never assumed."""
import jax
import jax.numpy as jnp
import pytest

from cnn_jax import config_base, precision


class FakeDevice:
  def __init__(self, platform, compute_capability=None):
    self.platform, self.compute_capability = platform, compute_capability


@pytest.mark.parametrize('device, expected', [
    (FakeDevice('tpu'), True),
    (FakeDevice('gpu', '9.0'), True),
    (FakeDevice('gpu', '8.0'), True),
    (FakeDevice('gpu', '7.5'), False),
    (FakeDevice('gpu', None), False),
])
def test_accelerators(device, expected):
  assert precision.native_bfloat16(device) is expected


@pytest.mark.parametrize('flags, expected', [
    ({'avx2', 'fma'}, False), ({'avx512f', 'avx512_bf16'}, True), ({'amx_bf16'}, True),
    ({'asimd', 'bf16'}, True), (set(), False)])
def test_cpu_flags_decide(monkeypatch, flags, expected):
  monkeypatch.setattr(precision, 'cpu_flags', lambda: frozenset(flags))
  assert precision.native_bfloat16(FakeDevice('cpu')) is expected
  monkeypatch.setattr(jax, 'devices', lambda: [FakeDevice('cpu')])
  assert precision.compute_dtype('auto') == (jnp.bfloat16 if expected else jnp.float32)


def test_named_dtypes_pass_through_and_auto_is_a_valid_config_value():
  assert precision.compute_dtype('bfloat16') == jnp.bfloat16
  assert precision.compute_dtype('float32') == jnp.float32
  config = config_base.base_config()
  config.dtype = 'auto'
  config_base.validate(config)


def test_this_hosts_flags_are_read():
  flags = precision.cpu_flags()
  if jax.devices()[0].platform == 'cpu' and flags:
    assert precision.native_bfloat16() == bool(flags & precision.CPU_BF16_FLAGS)
