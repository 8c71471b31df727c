"""The CIFAR versions of the classic architectures (issue 10 line 1): their parameter counts from
torchvision's published ones and layer arithmetic, their outputs, the configs, and the experiment's
`toy` preset end to end."""
import json

import jax
import jax.numpy as jnp
import pytest

from cnn_jax import config_base, models
from cnn_jax.conv_arithmetic import conv_params, dense_params
from cnn_jax.models import published, vgg
from configs import cifar_zoo
from tests.helpers import run_module


def _count(name, **kwargs):
  model = models.create(name, num_classes=10, **kwargs)
  shapes = jax.eval_shape(lambda: model.init(
      {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)),
      train=True))
  return sum(x.size for x in jax.tree.leaves(shapes['params']))


def _bn(c):
  return 2 * c


def test_resnet18_cifar_is_torchvision_resnet18_with_a_cifar_stem():
  tv = published.PUBLISHED_PARAMS['resnet18'][0]  # 1000 classes, 7x7 stem
  expected = (tv - conv_params(3, 64, 7, bias=False) + conv_params(3, 64, 3, bias=False)
              - dense_params(512, 1000) + dense_params(512, 10))
  assert _count('resnet18_cifar') == expected == 11_173_962


def test_googlenet_cifar_is_torchvision_googlenet_with_a_3x3_stem():
  tv = published.PUBLISHED_PARAMS['googlenet'][0]  # no aux heads, 1000 classes
  old_stem = (conv_params(3, 64, 7, bias=False) + _bn(64) + conv_params(64, 64, 1, bias=False)
              + _bn(64) + conv_params(64, 192, 3, bias=False) + _bn(192))
  new_stem = conv_params(3, 192, 3, bias=False) + _bn(192)
  expected = tv - old_stem + new_stem - dense_params(1024, 1000) + dense_params(1024, 10)
  assert _count('googlenet_cifar') == expected
  # Each auxiliary head: 1x1 conv to 128 (+ BN) on 4a (512 channels) or 4d (528), FC 2048 -> 1024
  # -> 10.
  aux_total = sum(conv_params(c, 128, 1, bias=False) + _bn(128) + dense_params(2048, 1024)
                  + dense_params(1024, 10) for c in (512, 528))
  assert _count('googlenet_cifar', aux_logits=True) == expected + aux_total


@pytest.mark.parametrize('depth', [11, 16])
def test_vgg_bn_cifar_counts(depth):
  expected, c_in = 0, 3
  for width, n in zip(vgg.VGG_WIDTHS, vgg.VGG_DEPTHS[depth]):
    for _ in range(n):
      expected += conv_params(c_in, width, 3) + _bn(width)
      c_in = width
  expected += dense_params(512, 10)
  assert _count(f'vgg{depth}_bn_cifar') == expected
  assert expected == {11: 9_231_114, 16: 14_728_266}[depth]


def test_alexnet_and_zfnet_cifar_counts():
  def alex(convs, hidden=1024):
    total, c_in = 0, 3
    for features, kernel, _, _ in convs:
      total += conv_params(c_in, features, kernel)
      c_in = features
    return total + dense_params(3 * 3 * c_in, hidden) + dense_params(hidden, hidden) + dense_params(
        hidden, 10)
  assert _count('alexnet_cifar') == alex(((64, 5, 1, 2), (192, 5, 1, 2), (384, 3, 1, 1),
                                          (256, 3, 1, 1), (256, 3, 1, 1)))
  assert _count('zfnet_cifar') == alex(((64, 3, 1, 1), (192, 5, 1, 2), (512, 3, 1, 1),
                                        (1024, 3, 1, 1), (512, 3, 1, 1)))


def test_zoo_models_classify_cifar_images_and_googlenet_has_aux_heads_in_training():
  for short, name in cifar_zoo.MODELS.items():
    config = cifar_zoo.get_config(f'{short},toy')
    model = models.create(name, num_classes=10, **config.model_kwargs)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda m=model: m.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, jnp.zeros((2, 32, 32, 3)),
        train=True))
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, train=False), variables, x)
    assert out.shape == (2, 10), short
    if short == 'googlenet':
      _, updates = jax.eval_shape(lambda v, x, m=model: m.apply(
          v, x, train=True, rngs={'dropout': jax.random.key(1)},
          mutable=['batch_stats', 'aux_logits']), variables, x)
      assert set(updates['aux_logits']) == {'aux1', 'aux2'}


def test_configs():
  for short in cifar_zoo.MODELS:
    for preset in ('', 'cpu', 'toy'):
      c = cifar_zoo.get_config(short + (f',{preset}' if preset else ''))
      config_base.validate(c)
      assert c.aux_loss_weight == 0.3
  assert cifar_zoo.get_config('googlenet,cpu').model_kwargs.aux_logits is True
  cpu = {cifar_zoo.get_config(f'{m},cpu').num_steps for m in cifar_zoo.MODELS}
  assert cpu == {400}  # one protocol for every model
  with pytest.raises(ValueError, match='Unknown model'):
    cifar_zoo.get_config('vgg19')
  with pytest.raises(ValueError, match='Unknown preset'):
    cifar_zoo.get_config('alexnet,fast')


def _run_toy(tmp_path, names):
  from tests.helpers import cifar_like_folder
  data = cifar_like_folder(tmp_path / 'data')
  work = tmp_path / 'work'
  args = ['experiments.cifar_zoo', '--preset=toy', f'--models={",".join(names)}',
          f'--workdir={work}', f'--set=data.data_dir={data}']
  env = {'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}
  out = run_module(args, env_extra=env, timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  report = (work / 'report.md').read_text()
  summary = json.loads((work / 'results.json').read_text())
  assert [r['model'] for r in summary['rows']] == names
  for r in summary['rows']:
    assert r['num_params'] > 0 and r['macs'] > 0 and 0 <= r['test_accuracy'] <= 1
  assert 'Beside the papers' in report and 'MACs / image' in report
  again = run_module(args + ['--report_only'], env_extra=env, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  return work, report


def test_toy_cifar_zoo_end_to_end(tmp_path):
  work, report = _run_toy(tmp_path, ['alexnet'])  # the smallest to compile: seconds
  assert (work / 'accuracy_vs_params.png').stat().st_size > 1000
  assert '| alexnet |' in report and 'Huang et al. 2017' not in report  # no DenseNet run


@pytest.mark.slow
def test_toy_cifar_zoo_every_model(tmp_path):
  _run_toy(tmp_path, list(cifar_zoo.MODELS))
