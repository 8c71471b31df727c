"""Training and evaluation: pure jitted steps, data-parallel over every device.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.data`, validates every
epoch, keeps the latest and the best checkpoint, stops early on the validation objective, and
finally evaluates the best checkpoint once on the test set. Rerunning it on the same workdir
resumes from the latest checkpoint and reaches the same result as an uninterrupted run.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import shlex
import sys
import threading
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from cnn_jax import (checkpointing, config_base, datasets, diagnostics, input_pipeline, models,
                     optim, parallel, report)
from cnn_jax.metric_writers import MetricWriter

# Set by a SIGTERM/SIGINT handler (cnn_jax.main): the loop saves the latest state and returns.
STOP_REQUESTED = threading.Event()


class TrainState(train_state.TrainState):
  batch_stats: Any
  plateau: optim.PlateauState


@flax.struct.dataclass
class StepConfig:
  """Static settings of the jitted steps."""
  batch_size: int = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)
  label_smoothing: float = flax.struct.field(pytree_node=False)
  aux_loss_weight: float = flax.struct.field(pytree_node=False)
  preprocess: input_pipeline.Preprocess = flax.struct.field(pytree_node=False)
  batch_sharding: Any = flax.struct.field(pytree_node=False)


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _variables(state, params=None):
  variables = {'params': state.params if params is None else params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def train_step(state: TrainState, totals: dict, images, labels, perm, step_in_epoch, rng,
               cfg: StepConfig):
  """One SGD step on the `step_in_epoch`-th batch of the epoch order `perm`.

  `totals` accumulates loss and accuracy on the device until the loop reads them at a log
  point, so no step waits for the host.
  """
  x, y = input_pipeline.take_batch(images, labels, perm, step_in_epoch, cfg.batch_size)
  x = jax.lax.with_sharding_constraint(x, cfg.batch_sharding)
  y = jax.lax.with_sharding_constraint(y, cfg.batch_sharding)
  aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  x = cfg.preprocess(x, aug_rng, train=True)

  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), x, train=True,
                                     rngs={'dropout': dropout_rng},
                                     mutable=['batch_stats', 'aux_logits'])
    loss = cross_entropy(logits, y, cfg.num_classes, cfg.label_smoothing).mean()
    # Auxiliary classifiers (GoogLeNet) sow their logits; their losses are added with a weight.
    for aux in jax.tree.leaves(updates.get('aux_logits', {})):
      loss += cfg.aux_loss_weight * cross_entropy(aux, y, cfg.num_classes, cfg.label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  param_updates = jax.tree.map(lambda u: u * state.plateau.scale, param_updates)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                        opt_state=opt_state, batch_stats=updates.get('batch_stats', {}))
  n = jnp.float32(cfg.batch_size)
  totals = {
      'loss': totals['loss'] + loss * n,
      'correct': totals['correct'] + jnp.sum(jnp.argmax(logits, -1) == y),
      'count': totals['count'] + n,
  }
  return state, totals


def evaluate(state: TrainState, images, labels, mask, cfg: StepConfig) -> dict:
  """Mean loss and accuracy over a padded split, one jitted scan over its batches."""
  num_batches = images.shape[0] // cfg.batch_size

  def body(totals, i):
    take = lambda a: jax.lax.with_sharding_constraint(
        jax.lax.dynamic_slice_in_dim(a, i * cfg.batch_size, cfg.batch_size), cfg.batch_sharding)
    x, y, m = take(images), take(labels), take(mask)
    logits = state.apply_fn(_variables(state), cfg.preprocess(x, None, train=False), train=False)
    m = m.astype(jnp.float32)
    loss = cross_entropy(logits, y, cfg.num_classes)
    return (totals[0] + jnp.sum(loss * m), totals[1] + jnp.sum((jnp.argmax(logits, -1) == y) * m),
            totals[2] + jnp.sum(m)), None

  zero = jnp.zeros((), jnp.float32)
  (loss, correct, count), _ = jax.lax.scan(body, (zero, zero, zero), jnp.arange(num_batches))
  return {'loss': loss / count, 'accuracy': correct / count}


def zero_totals(sharding=None) -> dict:
  """Fresh metric totals; placed like the step's outputs so the step compiles once."""
  totals = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'correct', 'count')}
  return totals if sharding is None else jax.device_put(totals, sharding)


def create_train_state(model, tx, input_shape, rng, sharding) -> TrainState:
  """Initialises parameters (in train mode, so train-only heads exist) on every device."""
  def init(rng):
    dummy = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    variables = model.init({'params': rng, 'dropout': rng}, dummy, train=True)
    state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables.get('batch_stats', {}),
                              plateau=optim.PlateauState.create())
    return state.replace(step=jnp.zeros((), jnp.int32))  # strong int32, as after an update
  return jax.jit(init, out_shardings=sharding)(rng)


def check_input_shape(name: str, model, shape) -> None:
  """Fails early, naming the fix, when the data does not fit the model."""
  expected = models.input_shape(name)
  hint = (f"Model {name!r} expects images of shape {expected} (H, W, C) but the data pipeline "
          f"yields {tuple(shape)}. Set --config.data.image_size to pad the images, or pick a "
          f"model whose input fits (cnn_jax.models.input_shape(name)).")
  if models.spec(name).fixed_input and tuple(shape) != tuple(expected):
    raise ValueError(hint)
  x = jax.ShapeDtypeStruct((1,) + tuple(shape), jnp.float32)
  try:
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  except Exception as e:  # shape arithmetic failed somewhere inside the model
    raise ValueError(f'{hint}\nUnderlying error: {e}') from e
  if out.ndim != 2:
    raise ValueError(f'Model {name!r} returns outputs of shape {out.shape[1:]} per image (e.g. '
                     'per-pixel logits for segmentation); this loop trains classifiers, whose '
                     'output is (num_classes,). Pick a classification model.')


def _selection_value(metric: str, val: dict) -> float:
  """The validation objective to minimise."""
  return val['loss'] if metric == 'val_loss' else -val['accuracy']


def _fresh_meta() -> dict:
  return {'best_value': math.inf, 'best_epoch': None, 'best_step': None, 'bad_epochs': 0,
          'stopped_early': False, 'train_seconds': 0.0, 'timed_images': 0, 'wall_seconds': 0.0,
          'epochs_done': 0}


def _log(msg: str) -> None:
  if parallel.is_main_process():
    print(msg, file=sys.stderr, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       halt_after_step: int | None = None, command: str | None = None) -> dict:
  """Trains and evaluates; returns the contents of results.json.

  `halt_after_step` simulates a pre-emption (tests): the loop saves and returns after that step.
  """
  config_base.validate(config)
  parallel.maybe_initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  last_tick = time.time()

  def tick() -> None:
    """Adds the wall time since the last tick to the run's total, which survives resumes."""
    nonlocal last_tick
    now = time.time()
    meta['wall_seconds'] += now - last_tick
    last_tick = now

  splits = datasets.load(config.data)
  preprocess = input_pipeline.Preprocess.from_config(config.data, splits)
  input_shape = preprocess.output_shape(splits.image_shape)
  model = models.create(config.model, num_classes=splits.num_classes,
                        dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  check_input_shape(config.model, model, input_shape)

  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size)
  num_train = len(splits.train[0])
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'config.batch_size={config.batch_size} exceeds the {num_train} training images.')
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch, total_steps)
  tx = optim.create_optimizer(config, lr_fn)

  root_rng = jax.random.key(config.seed)
  init_rng, data_rng, step_rng = (jax.random.fold_in(root_rng, i) for i in range(3))
  replicated = parallel.replicated(mesh)
  state = create_train_state(model, tx, input_shape, init_rng, replicated)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

  ckpts = checkpointing.Checkpoints(workdir)
  writer = MetricWriter(workdir)
  meta = _fresh_meta()
  restored = ckpts.restore('latest', state)
  if restored is not None:
    state, meta = restored
    writer.truncate_after(int(state.step))
    _log(f'Resuming from step {int(state.step)} (checkpoint in {workdir / "checkpoints"}).')
  if parallel.is_main_process():
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True))

  # The dataset lives on the devices; batches are gathered inside jit.
  train_x, train_y = input_pipeline.device_put_replicated(splits.train, replicated)
  eval_arrays = {}
  for split, (images, labels) in (('val', splits.val), ('test', splits.test),
                                  ('train_eval', train_eval_subset(splits.train, config.data))):
    if len(images):
      bs = _eval_batch_size(config.eval_batch_size, len(images))
      eval_arrays[split] = (bs, input_pipeline.device_put_replicated(
          input_pipeline.padded_eval_arrays(images, labels, bs), replicated))

  step_cfg = StepConfig(batch_size=config.batch_size, num_classes=splits.num_classes,
                        label_smoothing=config.label_smoothing,
                        aux_loss_weight=config.aux_loss_weight, preprocess=preprocess,
                        batch_sharding=parallel.batch_sharded(mesh))
  p_train_step = jax.jit(functools.partial(train_step, cfg=step_cfg), donate_argnums=(0, 1))
  p_permutation = jax.jit(functools.partial(input_pipeline.epoch_permutation,
                                            num_examples=num_train), out_shardings=replicated)
  p_evaluate = {split: jax.jit(functools.partial(
      evaluate, cfg=step_cfg.replace(batch_size=bs))) for split, (bs, _) in eval_arrays.items()}

  def run_eval(split, eval_state):
    return {k: parallel.host_scalar(v) for k, v in
            p_evaluate[split](eval_state, *eval_arrays[split][1]).items()}

  diagnose = None
  if config.gradient_diagnostics:
    diag_x, diag_y = splits.train[0][:config.batch_size], splits.train[1][:config.batch_size]
    diagnose = diagnostics.make_diagnostics_fn(model, preprocess, step_cfg, diag_x, diag_y)
    if int(state.step) == 0:
      writer.write(0, 'diagnostics', diagnose(state))

  start_step = int(state.step)
  bar = _progress_bar(config, total_steps, start_step)
  totals = zero_totals(replicated)
  interval_start, interval_images, first_interval = time.time(), 0, True
  perm = None
  step = start_step
  halted = False
  for step in range(start_step, total_steps):
    if meta['stopped_early']:
      break
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    if perm is None or step_in_epoch == 0:
      perm = p_permutation(data_rng, epoch)
    state, totals = p_train_step(state, totals, train_x, train_y, perm, step_in_epoch, step_rng)
    done = step + 1
    interval_images += config.batch_size
    end_of_epoch = done % steps_per_epoch == 0 or done == total_steps

    if done % config.log_every_steps == 0 or end_of_epoch:
      host = jax.device_get(totals)
      elapsed = time.time() - interval_start
      train_metrics = {'loss': host['loss'] / host['count'],
                       'accuracy': host['correct'] / host['count'],
                       'learning_rate': float(lr_fn(done - 1)) * float(state.plateau.scale),
                       'images_per_s': interval_images / max(elapsed, 1e-9)}
      if not np.isfinite(train_metrics['loss']):
        ckpts.wait()
        raise FloatingPointError(
            f"Training diverged: the train loss is {train_metrics['loss']} at step {done} "
            f"(epoch {epoch + 1}, learning rate {train_metrics['learning_rate']:.4g}). The last "
            f"good checkpoint (step {ckpts.latest_step()}) is kept in {workdir / 'checkpoints'}. "
            'Lower --config.learning_rate, add --config.warmup or --config.grad_clip_norm, and '
            'start in a new --workdir.')
      writer.write(done, 'train', train_metrics)
      if not first_interval:  # the first interval includes compilation
        meta['train_seconds'] += elapsed
        meta['timed_images'] += interval_images
      first_interval = False
      if bar is not None:
        bar.update(done - bar.n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_metrics['loss']:.4f}",
                        acc=f"{train_metrics['accuracy']:.4f}",
                        img_s=f"{train_metrics['images_per_s']:.0f}", refresh=False)
      totals = zero_totals(replicated)
      interval_start, interval_images = time.time(), 0

    if end_of_epoch:
      meta['epochs_done'] = epoch + 1
    eval_point = done == total_steps or (
        done % config.eval_every_steps == 0 if config.eval_every_steps else
        end_of_epoch and (epoch + 1) % config.eval_every_epochs == 0)
    if eval_point:
      if 'train_eval' in eval_arrays:
        writer.write(done, 'train_eval', run_eval('train_eval', state))
      if config.eval_test_curve and 'test' in eval_arrays:
        writer.write(done, 'test_curve', run_eval('test', state))
      if diagnose is not None:
        writer.write(done, 'diagnostics', diagnose(state))
    if end_of_epoch or eval_point:
      val = run_eval('val', state) if eval_point and 'val' in eval_arrays else None
      if val is not None:
        writer.write(done, 'val', val)
        value = _selection_value(config.selection_metric, val)
        improved = value < meta['best_value']
        tie = value == meta['best_value'] and config.selection_ties_to_latest
        meta['bad_epochs'] = 0 if improved else meta['bad_epochs'] + 1  # a tie is no progress
        if improved or tie:
          meta.update(best_value=value, best_epoch=epoch + 1, best_step=done)
          ckpts.save('best', done, state, meta)
        if config.lr_schedule == 'plateau':
          state = state.replace(plateau=optim.plateau_update(
              state.plateau, value, patience=config.plateau_patience,
              factor=config.lr_decay_factor, min_scale=config.plateau_min_scale,
              cooldown=config.plateau_cooldown, rtol=config.plateau_rtol))
        if 0 < config.early_stopping_patience <= meta['bad_epochs']:
          meta['stopped_early'] = True
          _log(f"Early stopping after epoch {epoch + 1}: {config.selection_metric} has not "
               f"improved for {meta['bad_epochs']} validations (best at epoch {meta['best_epoch']}).")
      if bar is not None and val is not None:
        bar.write(f"epoch {epoch + 1:3d}  step {done:7d}  val loss {val['loss']:.4f}  "
                  f"val accuracy {val['accuracy']:.4f}")
      elif val is not None and not config.progress_bar:
        _log(f"step {done}/{total_steps}  val loss {val['loss']:.4f}  "
             f"val accuracy {val['accuracy']:.4f}")
      tick()
      ckpts.save('latest', done, state, meta)
      interval_start = time.time()
    elif config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0:
      tick()
      ckpts.save('latest', done, state, meta)

    if done == halt_after_step or STOP_REQUESTED.is_set():
      tick()
      ckpts.save('latest', done, state, meta)
      halted = True
      break

  if bar is not None:
    bar.close()
  ckpts.wait()
  if halted:
    ckpts.close()
    writer.close()
    _log(f'Stopped at step {int(state.step)}; the state is saved. Rerun the same command to resume.')
    return {'status': 'interrupted', 'step': int(state.step)}

  # The final figures come from the best checkpoint (the latest when there is no validation).
  best = ckpts.restore('best', state) if 'val' in eval_arrays else None
  final_state = best[0] if best is not None else state
  results = {
      'status': 'stopped_early' if meta['stopped_early'] else 'completed',
      'name': config.name or config.model,
      'model': config.model,
      'num_params': num_params,
      'dataset': (f'{splits.name} ({splits.source})' if splits.source in config_base.DATA_SOURCES
                  else splits.source),  # a folder's own label, e.g. 'CIFAR-10 (JPEG copy)'
      'num_train': num_train, 'num_val': len(splits.val[0]), 'num_test': len(splits.test[0]),
      'steps': int(state.step), 'epochs': meta['epochs_done'], 'steps_per_epoch': steps_per_epoch,
      'best_epoch': meta['best_epoch'], 'best_step': meta['best_step'],
      'selection_metric': config.selection_metric,
  }
  if best is not None:
    results.update({f'val_{k}': v for k, v in run_eval('val', final_state).items()})
  if 'train_eval' in eval_arrays:  # training error of the last state, without augmentation
    results.update({f'final_train_eval_{k}': v for k, v in run_eval('train_eval', state).items()})
    results['num_train_eval'] = min(config.data.train_eval_size, num_train)
  if 'test' in eval_arrays:
    test = run_eval('test', final_state)
    writer.write(int(state.step), 'test', test)
    results.update({f'test_{k}': v for k, v in test.items()})
  tick()
  results.update({
      'wall_time_s': meta['wall_seconds'],
      'train_images_per_s': meta['timed_images'] / meta['train_seconds'] if meta['train_seconds'] else None,
      **parallel.device_summary(),
      'host_cpu': report.host_cpu(),
      'jax_version': jax.__version__,
      'command': command if command is not None else shlex.join([sys.executable] + sys.argv),
  })
  if parallel.is_main_process():
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
  ckpts.close()
  writer.close()
  return results


def train_eval_subset(train, data_config):
  """The fixed train images whose error, without augmentation, is the training error."""
  images, labels = train
  size = min(data_config.train_eval_size, len(images))
  idx = np.sort(np.random.default_rng(data_config.split_seed + 1).permutation(len(images))[:size])
  return images[idx], labels[idx]


def _eval_batch_size(requested: int, num_examples: int) -> int:
  """At most `requested`, no larger than the split, and a multiple of the device count."""
  n = jax.device_count()
  size = min(requested, num_examples)
  return max(n, -(-size // n) * n)


def _progress_bar(config, total_steps, start_step):
  if not (config.progress_bar and parallel.is_main_process()):
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr)
