"""torchvision checkpoints as this project's variables (transfer learning, claim C24).

Every zoo model with a torchvision twin takes torchvision's weights unchanged:

    from cnn_jax import models, pretrained
    variables = pretrained.load_torchvision('resnet50', 'resnet50-11ad3fa6.pth')
    model = models.create('resnet50', num_classes=pretrained.num_classes(variables))
    logits = model.apply(variables, x_nhwc, train=False)   # x normalised as torchvision's

`convert_state_dict(name, state_dict)` does the work on a plain {torchvision key: numpy array}
dict; `to_state_dict(name, variables)` is its exact inverse (export to PyTorch). The mapping:

  * module names: each family's table below (`stem_conv` <-> `conv1`, `stage2_block1` <->
    `layer2.0`, VGG's Sequential indices, ...);
  * conv kernels OIHW -> HWIO; linear weights (out, in) -> (in, out);
  * BatchNorm weight / bias / running_mean / running_var -> params scale, bias and batch_stats
    mean, var (`num_batches_tracked` is ignored on import and written as 0 on export);
  * the first linear layer after a flatten (AlexNet fc6, VGG fc1, GoogLeNet's auxiliary fc1):
    torch flattens NCHW in (C, H, W) order, this project flattens NHWC in (H, W, C) order, so
    the kernel's rows are permuted.

Files: a torch.save'd state_dict (.pth/.pt, read with torch when it is installed) or a
.safetensors file (read with a small numpy reader, no extra dependency). docs/pretrained.md
says how to download the published ImageNet weights.
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import pathlib
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from cnn_jax import models
from cnn_jax.models.vgg import VGG_DEPTHS

# zoo name -> torchvision model name (the same everywhere).
SUPPORTED = (
    ('alexnet_tv',)
    + tuple(f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn'))
    + ('googlenet',)
    + tuple(f'resnet{d}' for d in (18, 34, 50, 101, 152))
    + tuple(f'densenet{d}' for d in (121, 169, 201)))

# torchvision's names for the leaves of a flax module.
_PARAM_NAMES = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias',
                ('params', 'scale'): 'weight', ('batch_stats', 'mean'): 'running_mean',
                ('batch_stats', 'var'): 'running_var'}


class ConversionError(ValueError):
  """A checkpoint that does not fit the model: unknown model, missing, unexpected or
  mis-shaped keys. The message names the keys (a few of them when there are many)."""


def torchvision_name(name: str) -> str:
  """The torchvision model of a zoo model ('alexnet_tv' -> 'alexnet')."""
  _check_supported(name)
  return 'alexnet' if name == 'alexnet_tv' else name


# ----------------------------------------------------------------------------- module names
# Each maps a flax module path (tuple of submodule names) to its torchvision module prefix.

def _alexnet_module(path):
  table = {'layer1_conv': 'features.0', 'layer2_conv': 'features.3', 'layer3_conv': 'features.6',
           'layer4_conv': 'features.8', 'layer5_conv': 'features.10', 'fc6': 'classifier.1',
           'fc7': 'classifier.4', 'head': 'classifier.6'}
  return table[path[0]] if len(path) == 1 else None


def _vgg_module(depth: int, batch_norm: bool):
  table, index = {}, 0
  for i, n in enumerate(VGG_DEPTHS[depth], start=1):
    for j in range(1, n + 1):  # Conv2d, [BatchNorm2d], ReLU ...
      table[f'stage{i}_conv{j}'] = f'features.{index}'
      index += 1
      if batch_norm:
        table[f'stage{i}_bn{j}'] = f'features.{index}'
        index += 1
      index += 1
    index += 1  # ... MaxPool2d after each stage
  table.update({'fc1': 'classifier.0', 'fc2': 'classifier.3', 'head': 'classifier.6'})
  return lambda path: table.get(path[0]) if len(path) == 1 else None


_GOOGLENET_BRANCHES = {'branch1': 'branch1', 'branch2_a': 'branch2.0', 'branch2_b': 'branch2.1',
                       'branch3_a': 'branch3.0', 'branch3_b': 'branch3.1', 'branch4': 'branch4.1'}


def _googlenet_module(path):
  if path == ('head',):
    return 'fc'
  top = path[0]
  if top in ('conv1', 'conv2', 'conv3'):  # BasicConv2d: .conv, .bn
    return '.'.join(path)
  if top.startswith('inception') and len(path) == 3:
    return f'{top}.{_GOOGLENET_BRANCHES[path[1]]}.{path[2]}'
  if top in ('aux1_head', 'aux2_head'):  # InceptionAux: conv (BasicConv2d), fc1, fc2
    return '.'.join((top[:4],) + path[1:])
  return None


def _resnet_module(path):
  top = path[0]
  if len(path) == 1:
    return {'stem_conv': 'conv1', 'stem_bn': 'bn1', 'head': 'fc'}.get(top)
  m = re.fullmatch(r'stage(\d+)_block(\d+)', top)
  if m is None or len(path) != 2:
    return None
  inner = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(path[1], path[1])
  return f'layer{m[1]}.{int(m[2]) - 1}.{inner}'


def _densenet_module(path):
  top = path[0]
  if len(path) == 1:
    return {'stem_conv': 'features.conv0', 'stem_bn': 'features.norm0',
            'final_bn': 'features.norm5', 'head': 'classifier'}.get(top)
  m = re.fullmatch(r'stage(\d+)_layer(\d+)', top)
  if m is not None:
    inner = {'bn1': 'norm1', 'conv1': 'conv1', 'bn2': 'norm2', 'conv2': 'conv2'}[path[1]]
    return f'features.denseblock{m[1]}.denselayer{m[2]}.{inner}'
  m = re.fullmatch(r'transition(\d+)', top)
  if m is not None:
    return f'features.transition{m[1]}.{"norm" if path[1] == "bn" else path[1]}'
  return None


def _family(name: str):
  """(module-name function, {flax dense module path: (C, H, W) of the NCHW map it flattens},
  keys a checkpoint may hold that the model need not have)."""
  if name == 'alexnet_tv':
    return _alexnet_module, {('fc6',): (256, 6, 6)}, ()
  if name.startswith('vgg'):
    depth = int(name[3:5])
    return _vgg_module(depth, name.endswith('_bn')), {('fc1',): (512, 7, 7)}, ()
  if name == 'googlenet':
    # torchvision's published file keeps the auxiliary heads; without aux_logits they are dropped.
    aux_fc1 = {(f'aux{i}_head', 'fc1'): (128, 4, 4) for i in (1, 2)}
    return _googlenet_module, aux_fc1, ('aux1.', 'aux2.')
  if name.startswith('resnet'):
    return _resnet_module, {}, ()
  if name.startswith('densenet'):
    return _densenet_module, {}, ()
  raise AssertionError(name)


def _check_supported(name: str) -> None:
  if name not in SUPPORTED:
    close = difflib.get_close_matches(name, SUPPORTED, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ''
    raise ConversionError(
        f'No torchvision twin for model {name!r}.{hint} Models with torchvision weights: '
        f'{", ".join(SUPPORTED)}.')


# ----------------------------------------------------------------------------- the key table

def variable_shapes(name: str, num_classes: int = 1000, **model_kwargs) -> dict:
  """The variables tree of `models.create(name, ...)` as jax.ShapeDtypeStructs (nothing runs)."""
  return _variable_shapes(name, num_classes, tuple(sorted(model_kwargs.items())))


@functools.lru_cache(maxsize=64)
def _variable_shapes(name: str, num_classes: int, model_kwargs: tuple) -> dict:
  model = models.create(name, num_classes=num_classes, **dict(model_kwargs))
  h, w, c = models.input_shape(name)
  shapes = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((1, h, w, c)), train=False))
  return {k: v for k, v in shapes.items() if k in ('params', 'batch_stats')}


def key_table(name: str, shapes: Mapping) -> dict[str, tuple[tuple[str, ...], Any]]:
  """torchvision key -> (flax path (collection, module..., leaf), flax shape) for a model whose
  variable shapes are `shapes` (from `variable_shapes`)."""
  _check_supported(name)
  module_name, _, _ = _family(name)
  table = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(shapes))[0]:
    keys = tuple(p.key for p in path)
    collection, modules, leaf_name = keys[0], keys[1:-1], keys[-1]
    prefix = module_name(modules)
    suffix = _PARAM_NAMES.get((collection, leaf_name))
    if prefix is None or suffix is None:
      raise AssertionError(f'{name}: no torchvision name for {"/".join(keys)}')
    table[f'{prefix}.{suffix}'] = (keys, tuple(leaf.shape))
  return table


def _to_flax(value: np.ndarray, flax_shape, flatten_chw) -> np.ndarray:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear (out, in) -> (in, out), NCHW flatten order -> NHWC
    if flatten_chw is not None:
      c, h, w = flatten_chw
      return value.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(value.shape[0], -1).T
    return value.T
  return value


def _to_torch(value: np.ndarray, flatten_chw) -> np.ndarray:
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:
    if flatten_chw is not None:
      c, h, w = flatten_chw
      return value.T.reshape(-1, h, w, c).transpose(0, 3, 1, 2).reshape(value.shape[1], -1)
    return value.T
  return value


def _torch_shape(flax_shape) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _few(keys, n: int = 5) -> str:
  keys = sorted(keys)
  more = f' ... and {len(keys) - n} more' if len(keys) > n else ''
  return ', '.join(keys[:n]) + more


# densenet files published before torchvision 0.3 use 'denselayer1.norm.1.weight' for
# 'denselayer1.norm1.weight'; torchvision rewrites them with this pattern on load.
_OLD_DENSENET_KEY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.'
    r'((?:[12])\.(?:weight|bias|running_mean|running_var))$')


def _normalise_keys(name: str, state_dict: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for key, value in state_dict.items():
    if key.startswith('module.'):  # saved from nn.DataParallel / DistributedDataParallel
      key = key[len('module.'):]
    if name.startswith('densenet'):
      m = _OLD_DENSENET_KEY.match(key)
      if m:
        key = m[1] + m[2]
    out[key] = value
  return out


def _head_classes(name: str, state_dict: Mapping[str, Any]) -> int:
  key = {'alexnet_tv': 'classifier.6.weight', 'googlenet': 'fc.weight'}.get(name)
  if key is None:
    key = ('classifier.6.weight' if name.startswith('vgg') else
           'fc.weight' if name.startswith('resnet') else 'classifier.weight')
  if key not in state_dict:
    raise ConversionError(f'{name}: the checkpoint has no classifier weight {key!r}; is it a '
                          f'torchvision {torchvision_name(name)} state_dict?')
  return int(np.shape(state_dict[key])[0])


# ----------------------------------------------------------------------------- public API

def convert_state_dict(name: str, state_dict: Mapping[str, Any], *,
                       num_classes: int | None = None, **model_kwargs) -> dict:
  """torchvision state_dict ({key: array}) -> {'params': ..., 'batch_stats': ...} for
  `models.create(name, num_classes=..., **model_kwargs)`.

  `num_classes` defaults to the checkpoint's classifier width (1000 for ImageNet weights, or
  whatever a fine-tuned checkpoint has). Raises ConversionError on an unknown model, on keys
  the model lacks or needs (a few named), and on a shape mismatch (the key and both shapes).
  Values are numpy arrays (float32 parameters); `jax.device_put` them where they should live.
  """
  _check_supported(name)
  state_dict = _normalise_keys(name, state_dict)
  if num_classes is None:
    num_classes = _head_classes(name, state_dict)
  shapes = variable_shapes(name, num_classes, **model_kwargs)
  table = key_table(name, shapes)
  _, flattens, optional = _family(name)

  given = {k for k in state_dict if not k.endswith('num_batches_tracked')}
  missing = set(table) - given
  unexpected = {k for k in given - set(table) if not k.startswith(optional)}
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'{len(missing)} missing key(s): {_few(missing)}')
    if unexpected:
      parts.append(f'{len(unexpected)} unexpected key(s): {_few(unexpected)}')
    raise ConversionError(
        f'The checkpoint does not fit {name} (torchvision {torchvision_name(name)}, '
        f'{num_classes} classes{", " + str(model_kwargs) if model_kwargs else ""}): '
        + '; '.join(parts) + '.')

  variables: dict = {}
  for key, (path, flax_shape) in table.items():
    value = np.asarray(state_dict[key])
    if value.dtype != np.float32:
      value = value.astype(np.float32)
    want = _torch_shape(flax_shape)
    if value.shape != want:
      raise ConversionError(f'{name}: {key!r} has shape {value.shape}, the model needs {want} '
                            f'(flax {"/".join(path)} {flax_shape}).')
    converted = np.ascontiguousarray(_to_flax(value, flax_shape, flattens.get(path[1:-1])))
    node = variables
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = converted
  return variables


def to_state_dict(name: str, variables: Mapping) -> dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: this project's variables as a torchvision state_dict
  of numpy arrays (with `num_batches_tracked` = 0 for every BatchNorm, so that
  `torchvision_model.load_state_dict({k: torch.from_numpy(v) ...})` accepts it strictly)."""
  _check_supported(name)
  variables = {k: variables[k] for k in ('params', 'batch_stats') if k in variables}
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.float32), variables)
  _, flattens, _ = _family(name)
  out = {}
  for key, (path, _) in key_table(name, shapes).items():
    node = variables
    for part in path:
      node = node[part]
    out[key] = np.ascontiguousarray(_to_torch(np.asarray(node, np.float32),
                                              flattens.get(path[1:-1])))
    if key.endswith('.running_var'):
      out[key[:-len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return out


def num_classes(variables: Mapping) -> int:
  """The classifier width of converted variables (every supported model's head is 'head')."""
  return int(np.shape(variables['params']['head']['bias'])[0])


def load_torchvision(name: str, path: str | os.PathLike, **kwargs) -> dict:
  """Reads a torchvision checkpoint file and converts it (`convert_state_dict`).

  `.safetensors` files are read with numpy; anything else is a torch.save'd state_dict and
  needs torch (`torch.load(..., weights_only=True)`). `kwargs` go to `convert_state_dict`.
  """
  return convert_state_dict(name, read_state_dict(path), **kwargs)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """{key: numpy array} from a .safetensors file or a torch.save'd state_dict."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'No checkpoint at {path}. docs/pretrained.md shows how to '
                            f'download torchvision weights.')
  if path.suffix == '.safetensors':
    return read_safetensors(path)
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional: torchvision weight files only)
  except ImportError:
    raise ConversionError(
        f'{path} is a PyTorch checkpoint and reading it needs torch (pip install torch). '
        'Or convert it once, where torch is installed, to .safetensors '
        '(docs/pretrained.md), which this module reads with numpy alone.') from None
  obj = torch.load(path, map_location='cpu', weights_only=True)
  if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
    obj = obj['state_dict']  # a training checkpoint wrapping the state_dict
  if not isinstance(obj, Mapping):
    raise ConversionError(f'{path} holds a {type(obj).__name__}, not a state_dict.')
  return {k: _torch_to_numpy(v) for k, v in obj.items()}


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top  (optional: torchvision weight files only)
  t = t.detach().cpu()
  if t.dtype in (torch.bfloat16, torch.float16):
    t = t.float()
  return t.numpy()


def googlenet_transform_input(x: jax.Array) -> jax.Array:
  """torchvision's `transform_input=True` for GoogLeNet's ImageNet weights, on NHWC input.

  Those weights (ported from Google's) expect RGB scaled to [-1, 1]; torchvision rebuilds that
  from ImageNet-normalised input, channel by channel: x * std / 0.5 + (mean - 0.5) / 0.5.
  Apply this to ImageNet-normalised images before `googlenet` with the published weights.
  """
  mean = jnp.asarray((0.485, 0.456, 0.406), x.dtype)
  std = jnp.asarray((0.229, 0.224, 0.225), x.dtype)
  return x * (std / 0.5) + (mean - 0.5) / 0.5


# ----------------------------------------------------------------------------- safetensors

_ST_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64,
              'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
              'U16': np.uint16, 'U32': np.uint32, 'U64': np.uint64}


def _bfloat16():
  return np.dtype(ml_dtypes.bfloat16)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A .safetensors file as {name: numpy array}: an 8-byte little-endian header length, a JSON
  header {name: {dtype, shape, data_offsets: [begin, end]}, '__metadata__': ...}, then the
  little-endian tensor bytes (offsets relative to the end of the header). bfloat16 tensors come
  back as float32."""
  raw = pathlib.Path(path).read_bytes()
  if len(raw) < 8:
    raise ConversionError(f'{path} is not a safetensors file (too short).')
  n = int.from_bytes(raw[:8], 'little')
  if n > len(raw) - 8:
    raise ConversionError(f'{path} is not a safetensors file (header length {n} > file size).')
  try:
    header = json.loads(raw[8:8 + n])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f'{path} is not a safetensors file (bad JSON header: {e}).') from None
  data = memoryview(raw)[8 + n:]
  out = {}
  for key, info in header.items():
    if key == '__metadata__':
      continue
    kind = info['dtype']
    if kind == 'BF16':
      dtype = _bfloat16()
    elif kind in _ST_DTYPES:
      dtype = np.dtype(_ST_DTYPES[kind])
    else:
      raise ConversionError(f'{path}: tensor {key!r} has unsupported dtype {kind}.')
    begin, end = info['data_offsets']
    shape = tuple(info['shape'])
    if end - begin != int(np.prod(shape)) * dtype.itemsize or end > len(data):
      raise ConversionError(f'{path}: tensor {key!r} has {end - begin} bytes at [{begin}, {end}) '
                            f'for shape {shape} {kind}; the file is corrupt or truncated.')
    array = np.frombuffer(data[begin:end], dtype.newbyteorder('<')).reshape(shape)
    out[key] = array.astype(np.float32) if kind == 'BF16' else array.astype(dtype)
  return out


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None) -> None:
  """Writes {name: numpy array} as a .safetensors file (readable by the `safetensors` package
  and by `read_safetensors`)."""
  names = {np.dtype(v).name: k for k, v in _ST_DTYPES.items()}
  header: dict[str, Any] = {'__metadata__': dict(metadata)} if metadata else {}
  chunks, offset = [], 0
  for key in sorted(tensors):
    a = np.asarray(tensors[key])  # (not ascontiguousarray: it makes scalars 1-D)
    if a.dtype.name not in names:
      raise ValueError(f'{key!r}: dtype {a.dtype} cannot be written to safetensors here.')
    buf = a.astype(a.dtype.newbyteorder('<')).tobytes()
    header[key] = {'dtype': names[a.dtype.name], 'shape': list(a.shape),
                   'data_offsets': [offset, offset + len(buf)]}
    chunks.append(buf)
    offset += len(buf)
  head = json.dumps(header, separators=(',', ':')).encode()
  head += b' ' * (-len(head) % 8)  # align the data to 8 bytes, as the reference writer does
  with open(path, 'wb') as f:
    f.write(len(head).to_bytes(8, 'little'))
    f.write(head)
    for chunk in chunks:
      f.write(chunk)


def pth_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Converts a torch.save'd state_dict to .safetensors (needs torch), so that machines without
  torch can load it."""
  save_safetensors(dst, read_state_dict(src))


__all__ = ['SUPPORTED', 'ConversionError', 'convert_state_dict', 'to_state_dict',
           'load_torchvision', 'read_state_dict', 'read_safetensors', 'save_safetensors',
           'pth_to_safetensors', 'num_classes', 'googlenet_transform_input', 'torchvision_name',
           'variable_shapes', 'key_table']
