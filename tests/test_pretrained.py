"""cnn_jax.pretrained: torchvision checkpoints -> this project's variables (C24).

Three layers of evidence:
  * numpy only (runs in CI): for every supported model, random variables exported to a
    torchvision-named state_dict and converted back are bit-identical; the exported keys and
    shapes equal torchvision's own (tests/data/torchvision_state_dict_shapes.json.gz, written by
    `python tests/test_pretrained.py --write-shapes` in a venv with torchvision); safetensors
    files round-trip; bad checkpoints fail with the offending keys named.
  * torch (skipped without it): resnet18, vgg11_bn and a DenseNet-121-shaped net implemented
    below in torch, module for module as torchvision names them, with random weights and random
    BatchNorm statistics, give the same logits after conversion.
  * torchvision (skipped without it): the same against torchvision's own models, every one.
Logits agree when max |diff| <= 1e-5 * max |logit| (float32, batch 1, canonical input).
"""
from __future__ import annotations

import collections
import gzip
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from cnn_jax import models, pretrained

SHAPES_FILE = pathlib.Path(__file__).parent / 'data' / 'torchvision_state_dict_shapes.json.gz'
# Expensive to trace (deep) or to fill (VGG's 100M-weight fc1): slow. Their code paths are the
# same as the shallower members of their family, which run by default.
SLOW = {'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn', 'resnet34', 'resnet101',
        'resnet152', 'densenet169', 'densenet201'}
RTOL = 1e-5


def _params(names):
  return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def small_kwargs(name):
  """Narrow hidden FC layers for AlexNet/VGG (the flatten permutation is still exercised)."""
  return {'hidden': 64} if name.startswith(('vgg', 'alexnet')) else {}


def random_variables(name, seed=0, **kwargs):
  shapes = pretrained.variable_shapes(name, 1000, **kwargs)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)


def assert_logits_close(ours, ref):
  ours, ref = np.asarray(ours), np.asarray(ref)
  assert ours.shape == ref.shape
  scale = np.max(np.abs(ref))
  assert scale > 0
  err = np.max(np.abs(ours - ref))
  assert err <= RTOL * scale, f'max |diff| {err:.3g} > {RTOL} * max |logit| {scale:.3g}'


# ---------------------------------------------------------------------------- numpy only

@pytest.mark.parametrize('name', _params(pretrained.SUPPORTED))
def test_round_trip_is_exact(name):
  kwargs = small_kwargs(name)
  variables = random_variables(name, **kwargs)
  state_dict = pretrained.to_state_dict(name, variables)
  back = pretrained.convert_state_dict(name, state_dict, **kwargs)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    assert a.shape == b.shape and b.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  # Every torchvision key appears once; BN layers carry num_batches_tracked.
  n_bn = sum(k.endswith('running_var') for k in state_dict)
  assert sum(k.endswith('num_batches_tracked') for k in state_dict) == n_bn


@pytest.mark.parametrize('name', _params(pretrained.SUPPORTED))
def test_keys_and_shapes_equal_torchvision(name):
  expected = json.loads(gzip.decompress(SHAPES_FILE.read_bytes()))
  expected = expected[pretrained.torchvision_name(name)]
  table = pretrained.key_table(name, pretrained.variable_shapes(name))
  got = {k: list(pretrained._torch_shape(shape)) for k, (_, shape) in table.items()}
  got.update({k[:-len('running_var')] + 'num_batches_tracked': [] for k in table
              if k.endswith('.running_var')})  # what to_state_dict adds
  assert got == expected


def test_flatten_permutation_maps_nchw_rows_to_nhwc_rows():
  """AlexNet fc6: torch row c*36 + h*6 + w is flax row (h*6 + w)*256 + c."""
  rng = np.random.default_rng(1)
  variables = random_variables('alexnet_tv', hidden=8)
  state_dict = pretrained.to_state_dict('alexnet_tv', variables)
  torch_w = state_dict['classifier.1.weight']  # (8, 256*6*6)
  flax_k = np.asarray(variables['params']['fc6']['kernel'])  # (6*6*256, 8)
  for c, h, w in rng.integers(0, (256, 6, 6), size=(20, 3)):
    np.testing.assert_array_equal(torch_w[:, c * 36 + h * 6 + w], flax_k[(h * 6 + w) * 256 + c])
  # And a conv kernel is OIHW there, HWIO here.
  np.testing.assert_array_equal(state_dict['features.0.weight'][5, 2, 1, 7],
                                variables['params']['layer1_conv']['kernel'][1, 7, 2, 5])


def test_errors_name_the_keys():
  state_dict = pretrained.to_state_dict('resnet18', random_variables('resnet18'))
  with pytest.raises(pretrained.ConversionError, match=r"No torchvision twin.*'resnet20'"):
    pretrained.convert_state_dict('resnet20', state_dict)
  with pytest.raises(pretrained.ConversionError, match=r"Did you mean 'resnet18'"):
    pretrained.convert_state_dict('resnet1', state_dict)
  broken = dict(state_dict)
  del broken['layer3.1.bn2.running_mean']
  broken['layer9.0.conv1.weight'] = np.zeros(3, np.float32)
  with pytest.raises(pretrained.ConversionError,
                     match=r'1 missing key.*layer3\.1\.bn2\.running_mean.*'
                           r'1 unexpected key.*layer9\.0\.conv1\.weight'):
    pretrained.convert_state_dict('resnet18', broken)
  with pytest.raises(pretrained.ConversionError, match=r'missing key.*\.\.\. and \d+ more'):
    pretrained.convert_state_dict('resnet18', {'fc.weight': np.zeros((1000, 512), np.float32)})
  wrong = dict(state_dict, **{'layer2.0.conv1.weight': np.zeros((128, 64, 5, 5), np.float32)})
  with pytest.raises(pretrained.ConversionError,
                     match=r"'layer2\.0\.conv1\.weight' has shape \(128, 64, 5, 5\), the model "
                           r'needs \(128, 64, 3, 3\)'):
    pretrained.convert_state_dict('resnet18', wrong)


def test_num_classes_from_checkpoint_and_prefixes():
  """A fine-tuned 10-class head sets num_classes; DataParallel's 'module.' prefix is dropped;
  densenet's pre-0.3 key names ('norm.1') are read as torchvision reads them."""
  variables = random_variables('resnet18')
  variables['params']['head'] = {'kernel': np.ones((512, 10), np.float32),
                                 'bias': np.arange(10, dtype=np.float32)}
  sd = {'module.' + k: v for k, v in pretrained.to_state_dict('resnet18', variables).items()}
  back = pretrained.convert_state_dict('resnet18', sd)
  assert pretrained.num_classes(back) == 10
  np.testing.assert_array_equal(back['params']['head']['bias'], np.arange(10))

  sd = pretrained.to_state_dict('densenet121', random_variables('densenet121'))
  old = {k.replace('.norm1.', '.norm.1.').replace('.conv2.', '.conv.2.'): v
         for k, v in sd.items()}
  assert any('.norm.1.' in k for k in old)
  back = pretrained.convert_state_dict('densenet121', old)
  np.testing.assert_array_equal(
      back['params']['stage2_layer3']['bn1']['scale'],
      sd['features.denseblock2.denselayer3.norm1.weight'])


def test_googlenet_aux_heads_optional():
  """The published GoogLeNet file keeps aux1/aux2; they are dropped unless aux_logits=True."""
  variables = random_variables('googlenet', aux_logits=True)
  sd = pretrained.to_state_dict('googlenet', variables)
  assert 'aux1.fc1.weight' in sd and sd['aux1.fc1.weight'].shape == (1024, 2048)
  plain = pretrained.convert_state_dict('googlenet', sd)
  assert 'aux1_head' not in plain['params']
  with_aux = pretrained.convert_state_dict('googlenet', sd, aux_logits=True)
  np.testing.assert_array_equal(with_aux['params']['aux2_head']['fc1']['kernel'],
                                variables['params']['aux2_head']['fc1']['kernel'])


def test_safetensors_round_trip(tmp_path):
  import ml_dtypes
  tensors = {'a.weight': np.random.default_rng(0).standard_normal((3, 4, 2, 2), np.float32),
             'a.num_batches_tracked': np.array(7, np.int64),
             'b': np.arange(5, dtype=np.float16), 'c': np.array([True, False])}
  path = tmp_path / 'x.safetensors'
  pretrained.save_safetensors(path, tensors, metadata={'format': 'pt'})
  raw = path.read_bytes()
  n = int.from_bytes(raw[:8], 'little')
  header = json.loads(raw[8:8 + n])
  assert header['__metadata__'] == {'format': 'pt'} and (8 + n) % 8 == 0
  assert header['a.weight']['dtype'] == 'F32' and header['a.weight']['shape'] == [3, 4, 2, 2]
  back = pretrained.read_safetensors(path)
  assert set(back) == set(tensors)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape
    np.testing.assert_array_equal(back[k], v)
  # bfloat16 (written by hand: the format is the raw little-endian 2-byte words) -> float32.
  bf = np.array([1.5, -2.0, 3.140625], ml_dtypes.bfloat16)
  head = json.dumps({'w': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [0, 6]}}).encode()
  (tmp_path / 'bf.safetensors').write_bytes(len(head).to_bytes(8, 'little') + head + bf.tobytes())
  got = pretrained.read_safetensors(tmp_path / 'bf.safetensors')['w']
  assert got.dtype == np.float32 and got.tolist() == [1.5, -2.0, 3.140625]
  (tmp_path / 'bad.safetensors').write_bytes(raw[:-4])
  with pytest.raises(pretrained.ConversionError, match='corrupt or truncated'):
    pretrained.read_safetensors(tmp_path / 'bad.safetensors')


def test_load_torchvision_reads_safetensors(tmp_path):
  variables = random_variables('alexnet_tv', hidden=16)
  path = tmp_path / 'alexnet.safetensors'
  pretrained.save_safetensors(path, pretrained.to_state_dict('alexnet_tv', variables))
  back = pretrained.load_torchvision('alexnet_tv', path, hidden=16)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match='docs/pretrained.md'):
    pretrained.load_torchvision('alexnet_tv', tmp_path / 'nope.pth')


def test_googlenet_transform_input_matches_torchvision_formula():
  x = np.random.default_rng(0).standard_normal((2, 5, 5, 3)).astype(np.float32)
  got = np.asarray(pretrained.googlenet_transform_input(x))
  for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
    np.testing.assert_allclose(got[..., c], x[..., c] * (s / 0.5) + (m - 0.5) / 0.5, rtol=1e-6,
                               atol=1e-6)


# ---------------------------------------------------------------------------- torch

def randomise(net, seed=0):
  """Random weights and biases (torch's init) and random BatchNorm statistics, eval mode."""
  import torch
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.uniform_(-0.1, 0.1)
  return net.eval()


def compare_with_torch(name, net, **kwargs):
  """Converts `net`'s state_dict, runs both on one random canonical image, compares logits."""
  import torch
  h, w, c = models.input_shape(name)
  x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  state_dict = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  variables = pretrained.convert_state_dict(name, state_dict, **kwargs)
  model = models.create(name, num_classes=pretrained.num_classes(variables), **kwargs)
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1))
  assert_logits_close(ours, ref)
  # And back: the exported state_dict loads strictly into the torch net.
  exported = pretrained.to_state_dict(name, variables)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def torch_reference(name, **kwargs):
  """resnet*, vgg* and densenet* in torch, with torchvision's module names (torchvision's code,
  trimmed to inference), so the conversion is checked against torch without torchvision."""
  import torch
  from torch import nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.relu = nn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
      super().__init__()
      self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = downsample

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, width=64):
      super().__init__()
      self.inplanes = width
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.relu = nn.ReLU()
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      for i, n in enumerate(layers):
        setattr(self, f'layer{i + 1}', self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2))
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
      downsample = None
      if stride != 1 or self.inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion))
      layers = [block(self.inplanes, planes, stride, downsample)]
      self.inplanes = planes * block.expansion
      layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
      return nn.Sequential(*layers)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(self.avgpool(x).flatten(1))

  class VGG(nn.Module):
    def __init__(self, cfg, batch_norm, num_classes=1000, hidden=4096):
      super().__init__()
      layers, c = [], 3
      for v in cfg:
        if v == 'M':
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers.append(nn.Conv2d(c, v, 3, padding=1))
          layers += [nn.BatchNorm2d(v)] if batch_norm else []
          layers.append(nn.ReLU())
          c = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d(7)
      self.classifier = nn.Sequential(
          nn.Linear(512 * 49, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, hidden),
          nn.ReLU(), nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x):
      return self.classifier(self.avgpool(self.features(x)).flatten(1))

  class DenseLayer(nn.Module):
    def __init__(self, num_input, growth_rate, bn_size):
      super().__init__()
      self.norm1 = nn.BatchNorm2d(num_input)
      self.relu1 = nn.ReLU()
      self.conv1 = nn.Conv2d(num_input, bn_size * growth_rate, 1, bias=False)
      self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
      self.relu2 = nn.ReLU()
      self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x):
      y = self.conv1(self.relu1(self.norm1(x)))
      return torch.cat([x, self.conv2(self.relu2(self.norm2(y)))], 1)

  class DenseNet(nn.Module):
    def __init__(self, blocks, growth_rate=32, num_init_features=64, bn_size=4,
                 num_classes=1000):
      super().__init__()
      self.features = nn.Sequential(collections.OrderedDict([
          ('conv0', nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False)),
          ('norm0', nn.BatchNorm2d(num_init_features)), ('relu0', nn.ReLU()),
          ('pool0', nn.MaxPool2d(3, 2, 1))]))
      c = num_init_features
      for i, n in enumerate(blocks):
        block = nn.Sequential()
        for j in range(n):
          block.add_module(f'denselayer{j + 1}', DenseLayer(c + j * growth_rate, growth_rate,
                                                            bn_size))
        self.features.add_module(f'denseblock{i + 1}', block)
        c += n * growth_rate
        if i != len(blocks) - 1:
          self.features.add_module(f'transition{i + 1}', nn.Sequential(collections.OrderedDict([
              ('norm', nn.BatchNorm2d(c)), ('relu', nn.ReLU()),
              ('conv', nn.Conv2d(c, c // 2, 1, bias=False)), ('pool', nn.AvgPool2d(2, 2))])))
          c //= 2
      self.features.add_module('norm5', nn.BatchNorm2d(c))
      self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
      x = torch.relu(self.features(x))
      return self.classifier(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

  from cnn_jax.models import densenet, resnet, vgg
  if name.startswith('resnet'):
    block, layers = resnet.RESNET_DEPTHS[int(name[6:])]
    return ResNet(BasicBlock if block is resnet.BasicBlock else Bottleneck, layers, **kwargs)
  if name.startswith('vgg'):
    cfg = []
    for width, n in zip(vgg.VGG_WIDTHS, vgg.VGG_DEPTHS[int(name[3:5])]):
      cfg += [width] * n + ['M']
    return VGG(cfg, name.endswith('_bn'), **kwargs)
  if name.startswith('densenet'):
    return DenseNet(densenet.DENSENET_DEPTHS[int(name[8:])], **kwargs)
  raise ValueError(name)


# DenseNet-121's layout at growth 8, bn_size 2, 16 stem channels: every key and code path of
# densenet121, a sixteenth of its compute.
SMALL_DENSENET = {'growth_rate': 8, 'num_init_features': 16, 'bn_size': 2}
TORCH_CASES = {
    'resnet18': {},
    'vgg11_bn': {'hidden': 256},
    'densenet121': SMALL_DENSENET,
    'resnet50': {'width': 16},  # (slow) Bottleneck + v1.5 stride placement, quarter width
}


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n == 'resnet50' else n
                                  for n in sorted(TORCH_CASES)])
def test_logits_match_torch_reference(name):
  torch = pytest.importorskip('torch')
  kwargs = TORCH_CASES[name]
  torch.manual_seed(0)  # the weights torch's init draws at construction
  compare_with_torch(name, randomise(torch_reference(name, **kwargs)), **kwargs)


TORCHVISION_DEFAULT = ('alexnet_tv', 'googlenet', 'resnet18', 'vgg11_bn', 'densenet121')


def torchvision_model(name):
  tv = pytest.importorskip('torchvision')
  import torch
  torch.manual_seed(0)  # the weights torch's init draws at construction
  kwargs = {'aux_logits': False, 'init_weights': True} if name == 'googlenet' else {}
  return randomise(getattr(tv.models, pretrained.torchvision_name(name))(weights=None, **kwargs))


@pytest.mark.parametrize(
    'name', [n if n in TORCHVISION_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
             for n in pretrained.SUPPORTED])
def test_logits_match_torchvision(name):
  pytest.importorskip('torch')
  compare_with_torch(name, torchvision_model(name))


def write_shapes() -> None:
  """Writes SHAPES_FILE from torchvision (run once where torchvision is installed)."""
  import torchvision
  out = {}
  for name in pretrained.SUPPORTED:
    tv_name = pretrained.torchvision_name(name)
    kwargs = {'aux_logits': False, 'init_weights': False} if name == 'googlenet' else {}
    net = getattr(torchvision.models, tv_name)(weights=None, **kwargs)
    out[tv_name] = {k: list(v.shape) for k, v in net.state_dict().items()}
  out['_source'] = f'torchvision {torchvision.__version__}, weights=None state_dict() shapes'
  SHAPES_FILE.parent.mkdir(exist_ok=True)
  lines = [f'"_source": {json.dumps(out.pop("_source"))}']  # one key per line, diffable
  for model in sorted(out):
    keys = ',\n'.join(f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in out[model].items())
    lines.append(f'{json.dumps(model)}: {{\n{keys}\n}}')
  text = '{\n' + ',\n'.join(lines) + '\n}\n'
  SHAPES_FILE.write_bytes(gzip.compress(text.encode(), mtime=0))


if __name__ == '__main__' and sys.argv[1:] == ['--write-shapes']:
  write_shapes()
