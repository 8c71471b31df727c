"""The benchmarks' arithmetic and tables (the timings themselves are not tests)."""
import pytest

from benchmarks import suite_cache, train_step


def _row(peak=None, jax_ips=100.0, torch_ips=50.0):
  return {'model': 'm', 'batch': 8, 'num_params': 10, 'macs': 1e9, 'ratio': jax_ips / torch_ips,
          'jax': {'defaults': {'images_per_s': jax_ips, 'loop_images_per_s': 95.0,
                               'compile_s': 1.0, 'peak_rss_mb': 10.0}},
          'pytorch': {'images_per_s': torch_ips, 'peak_rss_mb': 5.0}, 'peak_flops': peak}


def test_peak_flops_from_the_device_kind_or_the_override():
  assert train_step.peak_flops('NVIDIA H200') == 989e12
  assert train_step.peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert train_step.peak_flops('cpu') is None
  assert train_step.peak_flops('cpu', override_tflops=2.0) == 2e12


def test_table_gflops_and_mfu_by_hand():
  # 6 x 1e9 MACs x 100 img/s = 600 GFLOP/s; over a 1 TFLOP/s peak: 60%; PyTorch at 50 img/s: 30%.
  text = train_step.table([_row(peak=1e12)], ['defaults'])
  assert 'MFU jax / torch' in text
  assert '| 600.0 / 300.0 | 60.0% / 30.0% |' in text
  assert '95 (0.95)' in text  # the loop against the bare step
  assert 'MFU' not in train_step.table([_row()], ['defaults'])  # no peak known: no column


def test_loop_cell_reports_the_median_of_the_alternating_windows_ratios():
  row = _row()
  row['jax']['defaults']['loop_over_step'] = 0.98  # the windows' median ratio, not 95 / 100
  assert '95 (0.98)' in train_step.table([row], ['defaults'])


def test_suite_cache_table_speed_up_is_against_the_cold_run_of_its_threshold():
  runs = [{'min_compile_secs': t, 'cold': cold, 'wall_s': wall, 'summary': 's',
           'cache_entries': 1, 'cache_mb': 1.0}
          for t, cold, wall in ((1.0, True, 600), (1.0, False, 300), (0.1, True, 900),
                                (0.1, False, 300))]
  lines = suite_cache.table(runs).splitlines()[2:]
  assert [l.split(' | ')[3] for l in lines] == ['1.00x', '2.00x', '1.00x', '3.00x']


def test_pytorch_resnet50_twin_has_the_published_parameter_count():
  pytest.importorskip('torch')
  from benchmarks import torch_models
  from cnn_jax import models
  import jax
  import jax.numpy as jnp
  theirs = torch_models.num_params(torch_models.create('resnet50'))
  shapes = jax.eval_shape(lambda: models.create('resnet50', num_classes=1000).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  ours = sum(int(x.size) for x in jax.tree.leaves(shapes['params']))
  assert theirs == ours == 25_557_032


def test_paired_ratio_is_the_median_of_the_rounds_ratios():
  # Round by round 2.0, 1.0, 1.5: median 1.5 (the ratio of the medians would be 1.6 / 1 here).
  assert train_step.paired_ratio([2.0, 1.6, 1.5], [1.0, 1.6, 1.0]) == 1.5
  assert train_step.paired_ratio([1.0], None) is None


@pytest.mark.parametrize('argv,message', [(['--models=nope'], 'no benchmark twin'),
                                          (['--variants=foo'], 'unknown')])
def test_unknown_model_or_variant_is_a_usage_error(argv, message, monkeypatch, capsys):
  monkeypatch.setattr('sys.argv', ['train_step'] + argv)
  with pytest.raises(SystemExit) as e:
    train_step.main()
  assert e.value.code == 2 and message in capsys.readouterr().err
