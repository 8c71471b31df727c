"""Every counted claim check can fail: each is a function of the runs' numbers, fed here data on
which it holds and, one check at a time, data on which it fails. Facts (from the config or the
architecture, or self-consistency) are kept apart and never count. No training: pure functions."""
import copy
import json
import pathlib
import types

import numpy as np
import pytest

from experiments import (cnn_vs_fc, gd_variants, init_variance, lecture_common, lenet5_mnist,
                         lr_sweep, normalization, readme_tables, report_parts, transfer,
                         unet_segmentation, visualize_filters)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def verdicts(rows) -> dict[str, bool]:
  """quantity -> holds, for rows of report_parts.CHECK_HEADERS."""
  return {r[1]: r[-1] == 'yes' for r in rows}


def assert_fails_alone(rows, quantity: str) -> None:
  """The one counted row whose quantity starts with `quantity` fails; every other holds."""
  v = verdicts(rows)
  failed = [q for q, holds in v.items() if not holds]
  assert len(failed) == 1 and failed[0].startswith(quantity), v


def assert_all_hold(checks, counted: int, facts: int = 0) -> None:
  assert len(checks.rows) == counted and len(checks.facts) == facts, (checks.rows, checks.facts)
  assert checks.all_hold and report_parts.all_hold(checks.facts), (checks.rows, checks.facts)


# ------------------------------------------------------------------------------- the harness


def test_facts_are_kept_apart_and_never_counted(tmp_path):
  checks = report_parts.Checks()
  checks.add('C0', 'measured', 'lecture', 'criterion', '1', True)
  checks.add('C0', 'from the config', 'lecture', 'criterion', '2', False, fact=True)
  assert [r[1] for r in checks.rows] == ['measured'] and checks.all_hold
  assert [r[1] for r in checks.facts] == ['from the config']
  record = report_parts.checks_record(checks)
  assert record['all_checks_hold'] and record['checks'] == checks.rows
  assert record['facts'] == checks.facts
  assert 'facts' not in report_parts.checks_record(checks.rows)  # a plain list: no facts
  text = report_parts.checks_section(checks)
  assert text.index('## Claim checks') < text.index(f'## {report_parts.FACTS_TITLE}')
  assert text.index('| measured |') < text.index(f'## {report_parts.FACTS_TITLE}')
  assert text.index(f'## {report_parts.FACTS_TITLE}') < text.index('| from the config |')
  assert report_parts.FACTS_TITLE not in report_parts.checks_section(checks.rows)
  lecture_common.finish(tmp_path, text, {'experiment': 'x'}, (), checks)
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['checks'] == checks.rows and saved['facts'] == checks.facts
  assert saved['all_checks_hold'] is True
  # The README's "checks hold" column counts the counted checks only.
  assert readme_tables.checks_cell(saved) == '1 of 1'
  assert readme_tables.checks_cell({'checks': checks.rows + checks.facts}) == '1 of 2'
  assert readme_tables.checks_cell({}) == '— (no checks: a table)'


# ------------------------------------------------------------------------------ lenet5_mnist

LENET5 = {'name': 'lenet5_mnist', 'test_accuracy': 0.9923, 'epochs': 20, 'num_params': 61_706,
          'num_val': 1024, 'selection_metric': 'val_accuracy', 'best_epoch': 20}
LENET5_CONFIG = types.SimpleNamespace(learning_rate=0.1, batch_size=64)


def test_lenet5_counts_the_test_accuracy_and_lists_the_config_as_facts():
  checks = lenet5_mnist.claim_checks(LENET5, LENET5_CONFIG)
  assert_all_hold(checks, counted=1, facts=3)
  assert {r[0] for r in checks.facts} == {'C13', 'C14', 'C15'}
  assert_fails_alone(lenet5_mnist.claim_checks({**LENET5, 'test_accuracy': 0.985},
                                               LENET5_CONFIG).rows, 'test accuracy')
  # The quick preset's target is 98%.
  assert lenet5_mnist.claim_checks({**LENET5, 'name': 'lenet5_mnist_quick', 'test_accuracy': 0.985},
                                   LENET5_CONFIG).all_hold
  wrong = lenet5_mnist.claim_checks({**LENET5, 'num_params': 60_000, 'num_val': 1000},
                                    LENET5_CONFIG)
  assert wrong.all_hold and sum(r[-1] != 'yes' for r in wrong.facts) == 2


# ------------------------------------------------------------------------------- gd_variants


def _variant(curves: list[list[float]], examples: int = 15_360) -> dict:
  runs = [{'val_loss': c, 'best_epoch': int(np.argmin(c)) + 1, 'examples_seen': examples}
          for c in curves]
  return {'runs': runs, 'min_val_loss': [min(c) for c in curves]}


def _gd_variants(**change) -> dict:
  variants = {'full-batch GD': _variant([[2.0, 1.5, 1.2, 1.0]]),
              'mini-batch SGD (64)': _variant([[0.5, 0.3, 0.4, 0.5]]),
              'SGD (batch 1)': _variant([[0.6, 0.4, 0.45, 0.5]])}
  return {**variants, **change}


def test_gd_variants_checks_hold_and_each_fails_on_its_own_data():
  assert_all_hold(gd_variants.claim_checks(_gd_variants(), 4), counted=2, facts=2)
  worse = _gd_variants(**{'mini-batch SGD (64)': _variant([[2.0, 1.5, 1.3, 1.1]])})
  assert_fails_alone(gd_variants.claim_checks(worse, 4).rows, 'lowest validation loss')
  flat = _gd_variants(**{'mini-batch SGD (64)': _variant([[0.5, 0.3, 0.25, 0.2]]),
                         'SGD (batch 1)': _variant([[0.6, 0.4, 0.3, 0.29]])})
  assert_fails_alone(gd_variants.claim_checks(flat, 4).rows, 'early stopping')


def test_gd_variants_budget_and_selection_are_facts():
  broken = _gd_variants(**{'SGD (batch 1)': _variant([[0.6, 0.4, 0.45, 0.5]], examples=999)})
  broken['full-batch GD']['runs'][0]['best_epoch'] = 1  # not the epoch of its minimum
  checks = gd_variants.claim_checks(broken, 4)
  assert checks.all_hold and [r[-1] for r in checks.facts] == ['**no**', '**no**']


# --------------------------------------------------------------------------------- cnn_vs_fc


def _setting(params: int, acc: float, shifted2: float, agree1: float, n: int = 1000) -> dict:
  mean = lambda v: {'mean': v, 'std': 0.0}
  return {'num_params': params, 'num_train': n, 'test_accuracy': mean(acc),
          'shift_accuracy': {0: mean(acc), 2: mean(shifted2)}, 'shift_agreement': {1: mean(agree1)}}


def _cnn_vs_fc(**change) -> dict:
  agg = {('lenet5', 1000): _setting(61_706, 0.94, 0.78, 0.92),
         ('mlp', 1000): _setting(1_453_094, 0.90, 0.60, 0.84),
         ('lenet5', 0): _setting(61_706, 0.98, 0.86, 0.96, 58_976),
         ('mlp', 0): _setting(1_453_094, 0.96, 0.70, 0.91, 58_976)}
  for key, value in change.items():
    model, size = key.rsplit('_', 1)
    agg[(model, int(size))] = value
  return agg


@pytest.mark.parametrize('change, quantity', [
    ({'mlp_1000': _setting(1_453_094, 0.95, 0.60, 0.84)}, 'test accuracy, 1,000'),
    ({'lenet5_0': _setting(61_706, 0.98, 0.60, 0.96, 58_976)}, 'accuracy lost to a 2-px shift, all'),
    ({'mlp_1000': _setting(1_453_094, 0.90, 0.60, 0.95)}, 'predictions unchanged by a 1-px shift, 1,000'),
])
def test_cnn_vs_fc_checks_fail_on_their_own_data(change, quantity):
  assert_all_hold(cnn_vs_fc.claim_checks(_cnn_vs_fc(), [1000, 0]), counted=6, facts=1)
  assert_fails_alone(cnn_vs_fc.claim_checks(_cnn_vs_fc(**change), [1000, 0]).rows, quantity)


def test_cnn_vs_fc_parameter_ratio_is_a_fact():
  small_fc = _cnn_vs_fc(mlp_1000=_setting(100_000, 0.90, 0.60, 0.84))
  checks = cnn_vs_fc.claim_checks(small_fc, [1000, 0])
  assert checks.all_hold and checks.facts[0][1].startswith('parameters')
  assert checks.facts[0][-1] == '**no**'


# ----------------------------------------------------------------------------- normalization

AXES = {'norms': {'batch': {'cells': {'batch': {'normalised': True}}, 'as_lecture': True}},
        'gn_one_group_vs_layer': 0.0, 'gn_size_one_vs_instance': 0.0}


def _norm_run(test_accuracy: float, running=None, single=None, diff=0.0) -> dict:
  test_time = {'inference': {'accuracy': running, 'max_logit_diff_batch_1_vs_1000': diff}}
  if single is not None:
    test_time['batch_statistics'] = {'1': single}
  return {'results': {'test_accuracy': test_accuracy}, 'test_time': test_time}


def _norm_runs(bn=((0.43, 0.43, 0.09), (0.44, 0.44, 0.15)), none=(0.29, 0.28)) -> dict:
  return {'batch': [_norm_run(a, r, s) for a, r, s in bn],
          'none': [_norm_run(a, 0.3) for a in none]}


def test_normalization_counts_the_trained_runs_only():
  assert_all_hold(normalization.claim_checks(AXES, _norm_runs()), counted=2, facts=3)
  single_wins = _norm_runs(bn=((0.43, 0.43, 0.09), (0.44, 0.44, 0.45)))
  assert_fails_alone(normalization.claim_checks(AXES, single_wins).rows,
                     'BatchNorm test accuracy: running averages')
  assert_fails_alone(normalization.claim_checks(AXES, _norm_runs(none=(0.5, 0.45))).rows,
                     'test accuracy, BatchNorm vs no normalisation')


def test_normalization_axes_and_batch_independence_are_facts():
  axes = copy.deepcopy(AXES)
  axes['norms']['batch']['as_lecture'] = False
  axes['gn_one_group_vs_layer'] = 0.5
  runs = _norm_runs()
  runs['batch'][0]['test_time']['inference']['max_logit_diff_batch_1_vs_1000'] = 1.0
  checks = normalization.claim_checks(axes, runs)
  assert checks.all_hold and [r[-1] for r in checks.facts] == ['**no**'] * 3


# ------------------------------------------------------------------------- unet_segmentation


def test_unet_counts_the_baseline_comparison_and_lists_the_recomputation_as_a_fact():
  miou = {'unet_same': 0.129, 'unet': 0.141}
  assert_all_hold(unet_segmentation.claim_checks(miou, miou, 0.103), counted=2, facts=2)
  assert_fails_alone(unet_segmentation.claim_checks({**miou, 'unet': 0.09}, miou, 0.103).rows,
                     'unet: test mIoU')
  checks = unet_segmentation.claim_checks(miou, {**miou, 'unet': 0.15}, 0.103)
  assert checks.all_hold and [r[-1] for r in checks.facts] == ['yes', '**no**']


# ------------------------------------------------------------------------- visualize_filters

FILTERS = {'filters': [{}] * 6, 'trained_mean_osi': 0.49, 'random_mean_osi_p95': 0.27,
           'p_value': 0.0,
           'cifar': {'filters': [{'colour_index': ci} for ci in (0.1, 0.9, 0.6, 0.3)],
                     'colour_index_std': 0.25, 'random_std_p95': 0.15, 'p_value': 0.0,
                     'colour_filters_chroma_dc_share': 0.79,
                     'random_chroma_dc_share_p95': 0.18}}


@pytest.mark.parametrize('key, value, quantity', [
    ('trained_mean_osi', 0.2, 'orientation selectivity'),
    ('cifar.colour_index_std', 0.1, 'spread (std) of the colour index'),
    ('cifar.colour_filters_chroma_dc_share', 0.1, 'DC share of the chromatic part'),
    ('cifar.filters', [{'colour_index': ci} for ci in (0.1, 0.2, 0.3, 0.4)], 'DC share'),
])
def test_visualize_filters_checks_fail_on_their_own_data(key, value, quantity):
  assert_all_hold(visualize_filters.claim_checks(FILTERS), counted=3)
  record = copy.deepcopy(FILTERS)
  *parents, leaf = key.split('.')
  target = record
  for p in parents:
    target = target[p]
  target[leaf] = value
  assert_fails_alone(visualize_filters.claim_checks(record).rows, quantity)


# ---------------------------------------------------------------------------------- lr_sweep


def _outcome(curve, diverged=False, test_accuracy=None, val_loss=None):
  return {'curve': curve, 'diverged': diverged, 'error': '', 'first_loss': curve[0][1],
          'final_loss': curve[-1][1], 'test_accuracy': test_accuracy, 'val_loss': val_loss,
          'val_accuracy': None, 'wall_time_s': 1.0}


SLOW = _outcome([(10, 2.3), (50, 1.5), (100, 0.9)], test_accuracy=0.8, val_loss=0.9)
FAST = _outcome([(10, 2.0), (30, 0.8), (100, 0.3)], test_accuracy=0.95, val_loss=0.3)
STUCK = _outcome([(10, 2.4), (100, 2.31)], test_accuracy=0.11, val_loss=2.3)


@pytest.mark.parametrize('lr, outcome, quantity', [
    (1.0, _outcome([(10, 2.0), (100, 0.5)], test_accuracy=0.9, val_loss=0.5), 'α = 1'),
    (0.1, _outcome([(10, 2.0), (30, 0.8), (100, 1.0)], test_accuracy=0.9, val_loss=0.3),
     'final training loss'),
    (0.1, _outcome([(10, 2.0), (30, 0.8), (100, 0.3)], test_accuracy=0.9, val_loss=1.0),
     'validation loss after the epoch'),
    (0.1, _outcome([(10, 2.0), (60, 0.8), (100, 0.3)], test_accuracy=0.9, val_loss=0.3),
     'step at which'),
])
def test_lr_sweep_checks_fail_on_their_own_data(lr, outcome, quantity):
  rows, holds = lr_sweep.checks({(1.0, 0): STUCK, (0.1, 0): FAST, (0.01, 0): SLOW})
  assert holds and len(rows) == 4, rows
  outcomes = {(1.0, 0): STUCK, (0.1, 0): FAST, (0.01, 0): SLOW, (lr, 0): outcome}
  assert_fails_alone(lr_sweep.checks(outcomes)[0], quantity)


def test_lr_sweep_diverged_rate_counts_as_not_learning():
  diverged = _outcome([(10, 2.4), (20, 80.0)], diverged=True)
  assert lr_sweep.checks({(1.0, 0): diverged, (0.1, 0): FAST, (0.01, 0): SLOW})[1]


# ------------------------------------------------------------------------------ init_variance


def _dense(change=None) -> dict:
  depth = 49
  small = [1e-4 ** layer for layer in range(depth)]
  curves = {('relu', 'He (2/n)'): [1.0 + 0.1 * (layer % 2) for layer in range(depth)],
            ('relu', 'LeCun (1/n)'): [0.5 ** layer for layer in range(depth)],
            ('tanh', 'small (std 0.01)'): small, ('relu', 'small (std 0.01)'): small,
            ('relu', 'N(0,1)'): [4.0 ** layer for layer in range(depth)], **(change or {})}
  return {k: {'act_var': v} for k, v in curves.items()}


@pytest.mark.parametrize('key, curve, quantity', [
    (('relu', 'He (2/n)'), [1.0, 3.0] * 3, 'He init'),
    (('relu', 'LeCun (1/n)'), [0.9 ** layer for layer in range(6)], 'LeCun init'),
    (('tanh', 'small (std 0.01)'), [1.0, 0.5, 0.4], 'std 0.01, tanh'),
    (('relu', 'N(0,1)'), [1.0, 2.0, 4.0], 'N(0,1), ReLU'),
])
def test_init_variance_dense_checks_fail_on_their_own_data(key, curve, quantity):
  rows, holds = init_variance.checks(_dense(), 50)
  assert holds and len(rows) == 5, rows
  assert_fails_alone(init_variance.checks(_dense({key: curve}), 50)[0], quantity)


# ---------------------------------------------------------------------------------- transfer


def _acc(small: dict, large: dict, std: float = 0.01) -> dict:
  cell = lambda m: {'mean': m, 'std': std, 'values': [m] * 3}
  return {**{('5', k): cell(v) for k, v in small.items()},
          **{('all', k): cell(v) for k, v in large.items()}}


TRANSFER_METHODS = ['scratch', 'head', 'last_stage', 'all']
TRANSFER_SMALL = {'scratch': 0.3, 'head': 0.5, 'last_stage': 0.45, 'all': 0.4}
TRANSFER_LARGE = {'scratch': 0.8, 'head': 0.6, 'last_stage': 0.8, 'all': 0.9}


@pytest.mark.parametrize('small, large, std, quantity', [
    ({'head': 0.45, 'last_stage': 0.5}, {'last_stage': 0.92}, 0.01, 'method with the best'),
    ({'last_stage': 0.45, 'all': 0.45}, {'head': 0.6, 'last_stage': 0.55, 'all': 0.62}, 0.05,
     'gain of fine-tuning'),
    ({'scratch': 0.6}, {}, 0.01, 'transfer against training from scratch'),
])
def test_transfer_checks_fail_on_their_own_data(small, large, std, quantity):
  rows, _ = transfer.checks(_acc(TRANSFER_SMALL, TRANSFER_LARGE), ['5', 'all'], TRANSFER_METHODS)
  assert len(rows) == 3 and report_parts.all_hold(rows), rows
  acc = _acc({**TRANSFER_SMALL, **small}, {**TRANSFER_LARGE, **large}, std)
  assert_fails_alone(transfer.checks(acc, ['5', 'all'], TRANSFER_METHODS)[0], quantity)


# ----------------------------------------------------------- the committed reports' records


@pytest.mark.parametrize('module', [cnn_vs_fc, gd_variants, init_variance, lenet5_mnist, lr_sweep,
                                    normalization, transfer, unet_segmentation, visualize_filters])
def test_committed_records_give_the_committed_rows(module):
  """The check functions, fed the records a report committed (through the experiment's
  `recompute`), write its rows again and they hold as the report says; tests/test_recompute.py
  compares them with results.json, report.md and the README row by row."""
  name = module.__name__.rsplit('.', 1)[-1]
  got = module.recompute(ROOT / 'reports' / name)
  record = json.loads((ROOT / 'reports' / name / 'results.json').read_text())
  if 'checks' in record:
    assert sorted(map(tuple, got.checks.rows + got.checks.facts)) == sorted(
        map(tuple, record['checks'] + record.get('facts', [])))
  assert got.checks.all_hold == record.get('all_checks_hold', True)
  assert report_parts.all_hold(got.checks.facts)


def test_lenet5_report_only_rewrite_keeps_the_runs_environment_and_seeds(tmp_path):
  """`--report_only` rewrites reports/lenet5_mnist from its records: the checks and facts are
  new, the seeds section and the environment the run was made in stay."""
  import shutil  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  for name in ('results.json', 'metrics.jsonl', 'config.json'):
    shutil.copy(ROOT / 'reports/lenet5_mnist' / name, tmp_path / name)
  old = ('# old\n\n## Claims\n\nstale\n\n<!-- seeds:begin -->\n## Over seeds\n<!-- seeds:end -->\n'
         '\n## Environment\n\n- **date**: the run\'s\n')
  (tmp_path / 'report.md').write_text(old)
  results = json.loads((tmp_path / 'results.json').read_text())
  config = ConfigDict(json.loads((tmp_path / 'config.json').read_text()))
  text = lenet5_mnist.write_report(tmp_path, results, config, keep_environment=True).read_text()
  assert text.endswith("## Environment\n\n- **date**: the run's\n") and 'stale' not in text
  assert text.count('<!-- seeds:begin -->\n## Over seeds\n<!-- seeds:end -->\n') == 1
  assert text.index('## Claim checks') < text.index(report_parts.FACTS_TITLE) < text.index(
      '<!-- seeds:begin -->')
