"""experiments/param_table.py on a small subset: its report agrees with direct counts."""
import json

import jax
import jax.numpy as jnp
import pytest

from cnn_jax import conv_arithmetic as ca
from cnn_jax import models
from experiments import param_table


def direct_params(name, num_classes):
  """Parameters counted from a real (allocated) init, independent of the experiment's code path."""
  shape = models.input_shape(name)
  variables = models.create(name, num_classes=num_classes).init(
      jax.random.key(0), jnp.zeros((1, *shape)), train=False)
  return sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))


# ResNet-20 parameters by hand: 3×3 convs without bias, BatchNorm (γ, β) after each, dense head.
RESNET20_PARAMS = (27 * 16 + 2 * 16                                        # stem + BN
                   + 6 * (144 * 16 + 2 * 16)                               # stage 1
                   + 144 * 32 + 5 * 288 * 32 + 6 * 2 * 32                  # stage 2
                   + 288 * 64 + 5 * 576 * 64 + 6 * 2 * 64                  # stage 3
                   + 64 * 10 + 10)                                         # head

# ResNet-20 (option A: identity/zero-pad shortcuts, no parameters) on 32×32×3, MACs by hand.
RESNET20_MACS = (32 * 32 * 16 * 27                                         # stem 3×3×3 → 16
                 + 6 * 32 * 32 * 16 * 144                                  # stage 1: six 3×3×16 convs
                 + 16 * 16 * 32 * 144 + 5 * 16 * 16 * 32 * 288             # stage 2 (first strided)
                 + 8 * 8 * 64 * 288 + 5 * 8 * 8 * 64 * 576                 # stage 3
                 + 64 * 10)                                                # head


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp('param_table')
  data = param_table.run(str(out), ['lenet5', 'resnet20'], command='pytest')
  with open(out / 'param_table.json') as f:
    saved = json.load(f)
  return data, saved, (out / 'report.md').read_text()


def test_rows_match_direct_counts(report):
  data, saved, _ = report
  rows = {r['model']: r for r in saved['models']}
  assert set(rows) == {'lenet5', 'resnet20'}
  assert rows['lenet5']['params'] == direct_params('lenet5', 10) == 61_706
  assert rows['resnet20']['params'] == RESNET20_PARAMS == 269_722
  assert rows['lenet5']['macs'] == 416_520
  assert rows['resnet20']['macs'] == RESNET20_MACS == 40_551_040
  assert rows['resnet20']['diff'] == rows['resnet20']['params'] - rows['resnet20']['published_params']
  assert all(r['num_classes'] == 10 and r['input_shape'][:2] == [32, 32] for r in rows.values())
  assert saved['models'] == json.loads(json.dumps(data['models']))


def test_claims_match_direct_counts(report):
  _, saved, _ = report
  assert saved['c1']['no_bias'] == 256 * 256 * 1000 == 65_536_000
  for r in saved['c18']:
    assert (r['one_7x7'], r['three_3x3']) == (49 * r['c'] ** 2, 27 * r['c'] ** 2)
    assert r['rf_one_7x7'] == r['rf_three_3x3'] == 7
    assert f"{100 * r['saving']:.1f}" == '44.9'
  c8 = saved['c8']
  assert (c8['cnn']['conv'], c8['cnn']['relus'], c8['cnn']['weights']) == (48, 304, 348)
  assert (c8['fc_twin']['fc1'], c8['fc_twin']['weights']) == (50_700, 51_000)
  assert all(c['figure'] == c['formula'] == c['lax'] for c in saved['c4_c5']['c5'])
  assert all(s['lecture_out'] == 34 and s['correct_out'] == 32 for s in saved['c4_c5']['same'])


def test_report_shows_the_numbers(report):
  _, saved, md = report
  assert 'Produced by `pytest`' in md and f"jax {jax.__version__}" in md
  assert '| lenet5 | 32×32×1 | 10 (MNIST) | 61,706 |' in md
  assert '| resnet20 | 32×32×3 | 10 (CIFAR-10) | 269,722 | 269,722 (' in md
  assert '0 (exact)' in md and '40.551 M' in md and '0.417 M' in md
  assert '| C14 | lenet5 | about 60K | 61,706 | +2.8% |' in md
  assert '65,536,000' in md and '| 512 | 12,845,056 | 7,077,888 | 49 | 27 | 44.9% | 7 | 7 |' in md
  assert '(K+1)/2 = 3 → output 34' in md and 'lecture WRONG' in md
  assert '50,700' in md and '| 348 (conv 48 + FC 300) |' in md


def test_a_failing_model_is_recorded_not_raised():
  row = param_table.model_row('no_such_model')
  assert 'Unknown model' in row['error']
  md = param_table.table_markdown([row])
  assert '**error**' in md


def test_cli_rejects_unknown_model(tmp_path):
  with pytest.raises(SystemExit):
    param_table.main([f'--out={tmp_path}', '--models=lenet5,nope'])


def test_count_params_agrees_with_abstract_init():
  model = models.create('lenet5', num_classes=10)
  assert ca.count_params(param_table.abstract_params(model, (32, 32, 1))['params']) == 61_706
