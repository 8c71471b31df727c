"""Claim C11: the normalisation layers of cifar_cnn, which axes each normalises over, the model's
parameter counts by hand, the config, and the experiment's toy preset end to end."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnn_jax import config_base, models
from cnn_jax.models import layers
from configs import normalization as config_file
from experiments import normalization
from tests.helpers import run_module
from tests.helpers import cifar_like_folder

# What the lecture's definitions give (notes 000 §5.1.4): the partitions over which each layer's
# output has mean 0 and variance 1. IN's blocks (one image, one channel) lie inside BN's, LN's
# and GN's, so its output is normalised over those too; GN's lie inside LN's.
LECTURE = {'batch': {'batch'}, 'layer': {'layer'}, 'group': {'layer', 'group'},
           'instance': {'batch', 'layer', 'instance', 'group'}}


def _normalised(check, norm):
  return {p for p, c in check['norms'][norm]['cells'].items() if c['normalised']}


def test_each_layer_normalises_over_the_lecture_axes():
  check = normalization.axes_check()
  for norm, expected in LECTURE.items():
    assert _normalised(check, norm) == expected, (norm, check['norms'][norm])
    assert check['norms'][norm]['as_lecture']
  assert check['gn_one_group_vs_layer'] < 1e-4 and check['gn_size_one_vs_instance'] < 1e-4
  # The cells that are not normalised miss by far more than the tolerance.
  for norm, d in check['norms'].items():
    for p, c in d['cells'].items():
      if not c['normalised']:
        assert c['max_abs_mean'] > 0.05 or c['max_abs_var_minus_1'] > 0.05, (norm, p, c)


def test_axes_check_catches_layers_over_other_axes():
  """flax's nn.LayerNorm() reduces over the channels alone; GroupNorm(2) has coarser groups."""
  wrong = {'layer': nn.LayerNorm(), 'group': nn.GroupNorm(num_groups=2)}

  def build(norm):
    return wrong[norm] if norm in wrong else layers.norm_layer(norm, True, jnp.float32, 4)()

  check = normalization.axes_check(layer_for=build)
  assert _normalised(check, 'layer') == {'layer', 'pixel'}
  assert not check['norms']['layer']['as_lecture'] and not check['norms']['group']['as_lecture']
  assert check['norms']['batch']['as_lecture'] and check['norms']['instance']['as_lecture']


def test_refines():
  shape = (2, 3, 3, 4)
  ids = {p: normalization.block_ids(shape, p, 2) for p in normalization.PARTITIONS}
  assert normalization.refines(ids['instance'], ids['batch'])
  assert normalization.refines(ids['group'], ids['layer'])
  assert not normalization.refines(ids['batch'], ids['layer'])
  assert not normalization.refines(ids['layer'], ids['group'])


@pytest.mark.parametrize('norm', layers.NORMS)
def test_parameter_count_by_hand(norm):
  model = models.create('cifar_cnn', num_classes=10, norm=norm)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  channels = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128)]
  kernels = sum(9 * cin * cout for cin, cout in channels)  # 139,104
  normalised = sum(cout for _, cout in channels)  # 320 channels
  head = 128 * 10 + 10
  # Without a norm every conv has a bias; with one, the norm's gamma and beta replace it.
  expected = kernels + head + (normalised if norm == 'none' else 2 * normalised)
  assert count(variables['params']) == expected == (140_714 if norm == 'none' else 141_034)
  assert count(variables.get('batch_stats', {})) == (2 * normalised if norm == 'batch' else 0)


def test_bad_norm_names_the_nearest():
  with pytest.raises(config_base.ConfigError, match="'batch'"):
    models.create('cifar_cnn', num_classes=10, norm='btach')
  with pytest.raises(config_base.ConfigError, match="'instance'"):
    config_file.get_config('instnce,toy')


def test_config_presets_and_sweep():
  c = config_file.get_config('group,toy')
  config_base.validate(c)
  assert c.model_kwargs.norm == 'group' and c.num_steps == 16
  assert config_file.get_config('').num_steps == 1_500
  assert config_file.get_config('quick,batch').num_steps == 150  # either order
  assert [s['model_kwargs.norm'] for s in config_file.get_sweep('toy')] == list(layers.NORMS)
  assert config_file.get_sweep('layer') == [{'model_kwargs.norm': 'layer'}]


@pytest.mark.slow  # five toy trainings: ~100 s of CPU, minutes on a busy 2-core machine
def test_toy_experiment_end_to_end(tmp_path):
  data = cifar_like_folder(tmp_path / 'data')
  work = tmp_path / 'work'
  args = ['experiments.normalization', '--preset=toy', f'--workdir={work}',
          f'--set=data.data_dir={data}', '--set=data.validation_size=80',
          '--set=data.train_subset=256']
  env = {'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}
  out = run_module(args, env_extra=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((work / 'results.json').read_text())
  assert set(results['runs']) == set(layers.NORMS)
  facts = {r[1]: r[-1] for r in results['facts']}  # from the definitions: listed, not counted
  for name in ('BatchNorm', 'LayerNorm', 'InstanceNorm', 'GroupNorm'):
    assert facts[f'{name}: the blocks its output has mean 0 and variance 1 over'] == 'yes'
  assert facts['BatchNorm at inference: largest logit difference, test batch 1 vs 1,000'] == 'yes'
  assert not set(facts) & {r[1] for r in results['checks']}
  bn = results['runs']['batch'][0]['test_time']
  assert set(bn['batch_statistics']) == {'16', '4', '1'} and bn['num_images'] == 80
  assert 'batch_statistics' not in results['runs']['layer'][0]['test_time']
  report = (work / 'report.md').read_text()
  for fact in ('**Hardware**', '**Data**', 'wall time', '## Environment', 'running averages'):
    assert fact in report
  assert (work / 'curves.png').stat().st_size > 1000
  # Rerunning skips the finished members and rewrites the report from their files.
  again = run_module(args + ['--report_only'], env_extra=env, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
