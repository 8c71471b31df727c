"""Shared test set-up: tests run on the CPU, in float32, deterministic."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
from cnn_jax import runtime  # noqa: E402

runtime.configure()  # the programs' XLA settings, before any test starts JAX's backend

# The programs the tests start get glibc's huge pages from the start, as `make test` gives this
# process, rather than restarting themselves on another allocator
# (runtime.restart_with_fast_malloc): each restart costs a second interpreter start.
os.environ.setdefault('CNN_JAX_MALLOC', 'glibc')
if 'glibc.malloc.hugetlb' not in os.environ.get('GLIBC_TUNABLES', ''):
  os.environ['GLIBC_TUNABLES'] = ':'.join(
      filter(None, [os.environ.get('GLIBC_TUNABLES'), runtime.HUGE_PAGES_TUNABLE]))

import pytest  # noqa: E402

# The default suite must stay under 15 minutes on the slower CI machines (2 AVX2 cores, cold
# compilation cache). These tests repeat what a cheaper default test already covers (named after
# each), so they run with the slow set (`make test-all`). Seconds measured on that machine
# (2026-12-02, `pytest --durations`, cold cache): the whole suite took 21.6 min before this list,
# 14.9 min with it less the last two BatchNorm entries.
SLOW_IN_CI = {
    # 21 s; the valid U-Net's mask crop in the train step: the toy runs of test_segmentation
    # train that net through the loop.
    'tests/test_segmentation.py::test_train_step_crops_the_mask_for_a_valid_unet',
    # 56 s; global-batch BatchNorm under sharding: test_multiprocess (1 x 4 against 2 x 2) and
    # test_four_devices_match_one[lenet5-extra0] (1 against 4 devices).
    'tests/test_parallel.py::test_four_devices_match_one[resnet8-extra1]',
    'tests/test_parallel.py::test_tolerance_separates_global_from_per_device_batch_norm',  # 22 s
    # Real forward/train/eval of the big classic nets (47 + 26 + 14 s); their parameter counts,
    # shapes and train-step traces stay in the default suite.
    'tests/test_models_classic.py::test_real_forward_train_and_eval[googlenet]',
    'tests/test_models_classic.py::test_real_forward_train_and_eval[vgg11_bn]',
    'tests/test_models_classic.py::test_real_forward_train_and_eval[unet]',
    'tests/test_models_classic.py::test_real_forward_train_and_eval[unet_same]',
    'tests/test_models_classic.py::test_bfloat16_compute_keeps_float32_params_and_logits',  # 9 s
    # 49 + 25 s (the same nets' compiles); BatchNorm moving only in train mode: test_layers and
    # test_models_densenet's small CIFAR DenseNet.
    'tests/test_models_classic.py::test_batchnorm_stats_move_only_in_train_mode[vgg11_bn-shape0-overrides0]',
    'tests/test_models_classic.py::test_batchnorm_stats_move_only_in_train_mode[googlenet-shape1-overrides1]',
    'tests/test_models_resnet.py::test_resnet18_forward_train_and_eval_at_224',  # 17 s
    # 30 s; SIGKILL and bit-identical resume: test_faults::test_sigkill_at_two_points...
    'tests/test_kill_resume.py::test_stopped_run_resumes_on_rerun[9--9]',
    # 12 s; restoring the state: test_train::test_resume_matches_uninterrupted and the kill tests.
    'tests/test_train.py::test_resume_restores_identical_state',
    # 33 s; a BatchNorm net learning through the loop: test_degradation's toy end to end.
    'tests/test_zoo_training.py::test_small_models_learn_through_the_loop[plain8-overrides2]',
    # 9 s; the MLP learning: test_lecture_experiments (cnn_vs_fc) and the LeNet-5 runs.
    'tests/test_zoo_training.py::test_small_models_learn_through_the_loop[mlp-overrides0]',
    # (test_zoo_training's train-step traces of the larger family members: its HEAVY set.)
    # Transfer learning (25 + 21 + 14 s): the toy experiment end to end and the exact weight
    # copy stay.
    'tests/test_transfer.py::test_transfer_run_resumes_like_an_uninterrupted_one',
    'tests/test_transfer.py::test_trainable_all_equals_an_ordinary_run_from_the_same_init',
    'tests/test_transfer.py::test_torchvision_file_is_a_source',
    # 19 s; AlexNet at 227 through the whole loop: test_toy_preset_trains_through_the_loop...
    'tests/test_alexnet_recipe.py::test_configured_model_trains_one_step_at_227',
    # 5 s; LeNet-5's pool-before-activation with tanh: the [relu] case (the default model).
    'tests/test_models_classic.py::test_lenet5_pools_before_a_nondecreasing_activation_same_function[tanh]',
}


def pytest_collection_modifyitems(config, items):
  del config
  known = {item.nodeid for item in items}
  files = {nodeid.split('::')[0] for nodeid in known}
  missing = {n for n in SLOW_IN_CI if n.split('::')[0] in files} - known
  if missing:  # a renamed test must not silently move back into the default suite
    raise pytest.UsageError(f'conftest.SLOW_IN_CI names tests that do not exist: {sorted(missing)}')
  for item in items:
    if item.nodeid in SLOW_IN_CI:
      item.add_marker(pytest.mark.slow)
