"""Transfer learning (claim C24): a trained network's body under a new head, and what trains.

    python -m cnn_jax.main --config=configs/transfer.py:transfer --workdir=workdirs/probe \\
        --config.init_from=workdirs/pretrain --config.trainable=head

`prepare(config, model_name, model, state, sharding, workdir)` is the one call the training loop
makes (cnn_jax.train.setup, right after the fresh state is built and before the workdir's own
latest checkpoint is restored, so a resumed run continues from its checkpoint):

* `config.init_from`: a workdir of this project (its 'best' checkpoint, else its 'latest'), or a
  torchvision state_dict file (.pth/.pt/.safetensors, via cnn_jax.pretrained). Every variable but
  the head's is copied (parameters and BatchNorm statistics); the head keeps its fresh
  initialisation with the new data's number of classes. Shapes are checked and every missing,
  unexpected or mis-shaped variable is listed in one ConfigError.
* `config.trainable`: 'all', 'last_stage' (the last stage of the feature extractor, what lies
  between it and the head, and the head) or 'head' (a linear probe). Frozen parameters get zero
  updates through `optax.multi_transform` (`optax.set_to_zero`; no momentum, no weight decay).
  BatchNorm layers inside frozen parts run in inference mode, Keras's convention for a frozen
  BatchNorm (its `trainable=False`): they normalise with the source's running statistics and do
  not update them, so a frozen feature extractor computes exactly the source network's features,
  in training as in evaluation. Dropout is left as it is.

What 'head' and 'last_stage' are is defined per model family in one table, `PARTS`, over the
top-level submodule names of each family (globs such as 'stage3_*'); a test checks it against
every classification model of the registry.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import pathlib
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from cnn_jax import checkpointing, config_base, models, parallel, pretrained
from cnn_jax.config_base import ConfigError
from cnn_jax.models import (alexnet, cifar_cnn, cifar_resnet, densenet, googlenet, layers, lenet,
                            mlp, resnet, vgg)

TRAINABLE = config_base.TRAINABLE  # ('all', 'last_stage', 'head')
TORCH_FILES = ('.pth', '.pt', '.safetensors')
RECORD = 'transfer.json'  # written in the workdir: the source and what trains


@dataclasses.dataclass(frozen=True)
class Parts:
  """Top-level submodule names (fnmatch globs) of a network: its classifier head(s), and the
  last stage of its feature extractor with whatever lies between that stage and the head."""
  head: tuple[str, ...]
  last_stage: tuple[str, ...]


# Model class -> its Parts, given the built module (depths decide the last stage's name). A
# subclass uses its nearest listed base (LeNet5Classic -> LeNet5).
PARTS: dict[type, Callable[[nn.Module], Parts]] = {
    # He et al.'s CIFAR ResNets and plain twins: stem, stage1..3, head.
    cifar_resnet.CifarResNet: lambda m: Parts(('head',), (f'stage{len(m.widths)}_*',)),
    # ImageNet ResNets (and the CIFAR-stem ResNet-18 of the zoo): stage4 is the last.
    resnet.ResNet: lambda m: Parts(('head',), (
        f'stage{len(resnet.RESNET_DEPTHS[m.depth][1])}_*',)),
    # LeNet-5: after the last pooling, C5 and F6.
    lenet.LeNet5: lambda m: Parts(('head',), ('c5', 'f6')),
    # MLP: the last hidden layer.
    mlp.MLP: lambda m: Parts(('head',), (f'fc{len(m.hidden)}',) if m.hidden else ()),
    # AlexNet / ZFNet: the last pooling stage (conv3-5) and the two hidden FC layers.
    alexnet.AlexNet: lambda m: Parts(('head',), ('layer3_conv', 'layer4_conv', 'layer5_conv',
                                                 'fc6', 'fc7')),
    # VGG: conv stage 5 and the two hidden FC layers.
    vgg.VGG: lambda m: Parts(('head',), ('stage5_*', 'fc1', 'fc2')),
    # GoogLeNet: the auxiliary classifiers are heads too (new classes); the last stage is 5a, 5b.
    googlenet.GoogLeNet: lambda m: Parts(('head', 'aux1_head', 'aux2_head'),
                                         ('inception5a', 'inception5b')),
    # DenseNet(-BC): the last dense block and the BatchNorm after it.
    densenet.DenseNet: lambda m: Parts(('head',), (f'stage{len(m.block_config())}_*',
                                                   'final_bn')),
    # The small normalisation CNN: stage 3 (one conv and its norm).
    cifar_cnn.CifarCNN: lambda m: Parts(('head',), ('conv3_*', 'norm3_*')),
}


def parts(model_name: str, model: nn.Module) -> Parts:
  """The model's head and last stage (PARTS); ConfigError for a model outside the table."""
  if models.spec(model_name).task != 'classification':
    raise ConfigError(f'config.trainable / config.init_from apply to classification models; '
                      f'{model_name!r} is a {models.spec(model_name).task} model.')
  for cls in type(model).__mro__:
    if cls in PARTS:
      return PARTS[cls](model)
  raise ConfigError(f'Model {model_name!r} ({type(model).__name__}) has no entry in '
                    'cnn_jax.transfer.PARTS, which says what its head and last stage are; add one.')


def _matches(name: str, globs) -> bool:
  return any(fnmatch.fnmatchcase(name, g) for g in globs)


def trainable_modules(model_name: str, model: nn.Module, top_level_names, trainable: str
                      ) -> set[str]:
  """The top-level submodules that train under `trainable` ('all', 'last_stage', 'head')."""
  config_base.check_choice('trainable', trainable, TRAINABLE)
  names = set(top_level_names)
  if trainable == 'all':
    return names
  p = parts(model_name, model)
  globs = p.head + (p.last_stage if trainable == 'last_stage' else ())
  return {n for n in names if _matches(n, globs)}


def head_modules(model_name: str, model: nn.Module, top_level_names) -> set[str]:
  p = parts(model_name, model)
  return {n for n in top_level_names if _matches(n, p.head)}


def labels(params, train_names) -> dict:
  """'trainable' / 'frozen' for every parameter leaf, by its top-level submodule."""
  return {k: jax.tree.map(lambda _, t=k in train_names: 'trainable' if t else 'frozen', v)
          for k, v in params.items()}


def masked_optimizer(tx: optax.GradientTransformation, params, train_names
                     ) -> optax.GradientTransformation:
  """`tx` on the trainable parameters, zero updates (and no optimizer state) on the others."""
  return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()},
                               labels(params, train_names))


def count(params, names) -> int:
  return sum(int(np.prod(np.shape(x))) for k, v in params.items() if k in names
             for x in jax.tree.leaves(v))


# ------------------------------------------------------------------- frozen BatchNorm layers


def _bn_inference(module: nn.Module, x, residual=None):
  """A BatchNorm (cnn_jax.models.layers.BatchNorm or flax's, over the last axis) in inference
  mode: the running statistics folded into one multiply-add, as layers.BatchNorm evaluates,
  with the residual and the ReLU of a `BatchNorm(relu=True)`."""
  mean = module.get_variable('batch_stats', 'mean')
  var = module.get_variable('batch_stats', 'var')
  scale = (module.get_variable('params', 'scale') if module.has_variable('params', 'scale')
           else 1.0)
  bias = module.get_variable('params', 'bias') if module.has_variable('params', 'bias') else 0.0
  a = scale * jax.lax.rsqrt(var + module.epsilon)
  y = x.astype(jnp.float32) * a + (bias - mean * a)
  if residual is not None:
    y = y + residual.astype(jnp.float32)
  if getattr(module, 'relu', False):
    y = jax.nn.relu(y)
  return y.astype(module.dtype or x.dtype)


def _frozen_bn_interceptor(frozen: frozenset, next_fun, args, kwargs, context):
  m = context.module
  if (context.method_name == '__call__' and isinstance(m, (layers.BatchNorm, nn.BatchNorm))
      and m.path and m.path[0] in frozen and not m.is_initializing()):
    if isinstance(m, nn.BatchNorm) and m.axis != -1:
      raise NotImplementedError(f'Frozen BatchNorm over axis {m.axis} at {m.path}.')
    return _bn_inference(m, args[0], kwargs.get('residual'))
  return next_fun(*args, **kwargs)


def _apply_with_frozen_bn(apply_fn, frozen: frozenset, *args, **kwargs):
  with nn.intercept_methods(functools.partial(_frozen_bn_interceptor, frozen)):
    return apply_fn(*args, **kwargs)


def freeze_batch_norm(apply_fn: Callable, frozen) -> Callable:
  """`apply_fn` (a model's apply) with every BatchNorm under the top-level submodules `frozen`
  in inference mode, whatever `train` says."""
  frozen = frozenset(frozen)
  return functools.partial(_apply_with_frozen_bn, apply_fn, frozen) if frozen else apply_fn


# ---------------------------------------------------------------------------- source weights


def _checkpoint_step_dir(root: pathlib.Path) -> pathlib.Path | None:
  """The newest complete step folder (a number, with its 'state' item) of a checkpoint kind."""
  steps = sorted((int(p.name), p) for p in root.glob('*') if p.name.isdigit()
                 and (p / 'state').is_dir()) if root.is_dir() else []
  return steps[-1][1] if steps else None


def find_checkpoint(path: pathlib.Path) -> pathlib.Path:
  """The step folder to transfer from: `path` is a workdir (its 'best', else 'latest'
  checkpoint), its checkpoints/ folder, one kind (checkpoints/best) or a step folder."""
  candidates = [path / 'checkpoints' / 'best', path / 'checkpoints' / 'latest', path / 'best',
                path / 'latest', path]
  for root in candidates:
    step = _checkpoint_step_dir(root)
    if step is not None:
      return step
  if (path / 'state').is_dir():
    return path
  raise ConfigError(
      f'config.init_from={str(path)!r} holds no checkpoint: expected a workdir of a finished run '
      f'(with checkpoints/best/<step>/state or checkpoints/latest/<step>/state), or a torchvision '
      f'state_dict file ({", ".join(TORCH_FILES)}).')


def load_source(init_from: str, model_name: str, model_kwargs=None) -> tuple[dict, str]:
  """({'params': ..., 'batch_stats': ...} as host arrays, a description of the source)."""
  path = pathlib.Path(init_from).expanduser()
  if path.is_file():
    if path.suffix not in TORCH_FILES:
      raise ConfigError(f'config.init_from={init_from!r} is a file but not a torchvision '
                        f'state_dict ({", ".join(TORCH_FILES)}); or give a workdir.')
    try:
      variables = pretrained.load_torchvision(model_name, path, **dict(model_kwargs or {}))
    except (pretrained.ConversionError, FileNotFoundError) as e:
      raise ConfigError(f'config.init_from={init_from!r}: {e}') from e
    return jax.device_get(variables), f'torchvision state_dict {path}'
  if not path.exists():
    raise ConfigError(f'config.init_from={init_from!r} does not exist. Give the workdir of a '
                      f'trained run or a torchvision state_dict file ({", ".join(TORCH_FILES)}).')
  step_dir = find_checkpoint(path)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      state = ckptr.restore(step_dir.resolve() / 'state')
  except Exception as e:  # pylint: disable=broad-except  (any unreadable checkpoint)
    raise ConfigError(f'config.init_from: cannot read the checkpoint {step_dir}: {e}') from e
  variables = {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
  return jax.device_get(variables), f'checkpoint {step_dir} (step {step_dir.name})'


def _flat(tree) -> dict[tuple[str, ...], Any]:
  return {tuple(str(getattr(k, 'key', k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _few(items, n: int = 8) -> str:
  items = sorted('/'.join(i) if isinstance(i, tuple) else str(i) for i in items)
  return ', '.join(items[:n]) + (f' and {len(items) - n} more' if len(items) > n else '')


def copy_variables(source: dict, params, batch_stats, skip: set[str]):
  """(params, batch_stats) with every variable outside the top-level submodules `skip` (the new
  head) replaced by the source's, placed like the target's; ConfigError listing every
  mismatch."""
  missing, unexpected, shapes = [], [], []
  new = {}
  for collection, target in (('params', params), ('batch_stats', batch_stats)):
    src = _flat(source.get(collection) or {})
    dst = _flat(target or {})
    keep = lambda key: key[0] not in skip
    missing += [(collection,) + k for k in dst if keep(k) and k not in src]
    unexpected += [(collection,) + k for k in src if keep(k) and k not in dst]
    shapes += [f'{collection}/{"/".join(k)}: source {np.shape(src[k])}, model '
               f'{np.shape(dst[k])}' for k in dst
               if keep(k) and k in src and np.shape(src[k]) != np.shape(dst[k])]
    new[collection] = src
  if missing or unexpected or shapes:
    lines = []
    if shapes:
      lines.append(f'  shapes differ: {"; ".join(shapes[:8])}'
                   + (f' and {len(shapes) - 8} more' if len(shapes) > 8 else ''))
    if missing:
      lines.append(f'  missing in the source: {_few(missing)}')
    if unexpected:
      lines.append(f'  in the source but not in the model: {_few(unexpected)}')
    raise ConfigError('config.init_from does not fit config.model (the head is exempt, it is '
                      'new):\n' + '\n'.join(lines) + '\nUse the same config.model and '
                      'config.model_kwargs as the source run.')

  def replace(collection, tree):
    src = new[collection]
    def leaf(path, x):
      key = tuple(str(getattr(k, 'key', k)) for k in path)
      if key[0] in skip:
        return x
      return jax.device_put(np.asarray(src[key], dtype=x.dtype), x.sharding)
    return jax.tree_util.tree_map_with_path(leaf, tree)

  return replace('params', params), replace('batch_stats', batch_stats) if batch_stats else {}


# ------------------------------------------------------------------------------- the one call


def is_active(config) -> bool:
  return bool(config.init_from) or config.trainable != 'all'


def _has_own_checkpoint(workdir: pathlib.Path | None) -> bool:
  return workdir is not None and _checkpoint_step_dir(
      pathlib.Path(workdir) / 'checkpoints' / 'latest') is not None


def prepare(config, model_name: str, model: nn.Module, state, sharding, workdir=None):
  """The fresh train state turned into the transfer run's: weights from `config.init_from`
  (unless the workdir has its own checkpoint to resume from, which the loop restores next),
  the optimizer masked to `config.trainable`, BatchNorm frozen where the network is. A no-op
  for an ordinary run (no init_from, trainable='all')."""
  if not is_active(config):
    return state
  top = set(state.params) | set(state.batch_stats or {})
  train_names = trainable_modules(model_name, model, top, config.trainable)
  heads = head_modules(model_name, model, top)
  record = {'init_from': config.init_from, 'trainable': config.trainable,
            'trainable_modules': sorted(train_names), 'frozen_modules': sorted(top - train_names),
            'num_params': count(state.params, top),
            'num_trainable_params': count(state.params, train_names)}
  params, batch_stats = state.params, state.batch_stats
  if config.init_from and not _has_own_checkpoint(workdir):
    source, what = load_source(config.init_from, model_name, config.model_kwargs)
    params, batch_stats = copy_variables(source, params, batch_stats, heads)
    record.update(source=what, new_modules=sorted(heads))
    _log(f'Transfer: weights from {what}; new {", ".join(sorted(heads))}.')
  tx = masked_optimizer(state.tx, params, train_names)
  opt_state = jax.jit(tx.init, out_shardings=sharding)(params)
  state = state.replace(params=params, batch_stats=batch_stats, tx=tx, opt_state=opt_state,
                        apply_fn=freeze_batch_norm(state.apply_fn, top - train_names))
  _log(f"Transfer: training {record['num_trainable_params']:,} of {record['num_params']:,} "
       f"parameters (trainable={config.trainable!r}: {', '.join(sorted(train_names))}).")
  if workdir is not None and parallel.is_main_process() and 'source' in record:
    checkpointing.write_text(pathlib.Path(workdir) / RECORD, json.dumps(record, indent=2) + '\n')
  return state


def _log(msg: str) -> None:
  if parallel.is_main_process():
    print(msg, file=sys.stderr, flush=True)
