"""Training and evaluation: pure jitted steps, data-parallel over every device.

`train_and_evaluate(config, workdir)` trains `config.model` on `config.data`, validates every
epoch, keeps the latest and the best checkpoint, stops early on the validation objective, and
finally evaluates the best checkpoint once on the test set. Rerunning it on the same workdir
resumes from the latest checkpoint and reaches the same result as an uninterrupted run.

The loop reads in three parts: `setup` (data on the devices, the jitted steps, the restored
state), `train_loop` with `eval_point` (validation, selection of the best checkpoint,
reduce-on-plateau, early stopping) and the checkpoint cadence, and `final_results`. The run's
bookkeeping is a `RunState`, saved as JSON beside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import shlex
import sys
import threading
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from flax.training import train_state

from cnn_jax import (checkpointing, config_base, datasets, diagnostics, input_pipeline, models,
                     optim, parallel, precision, report, runtime, streaming, tasks, transfer)
from cnn_jax.config_base import ConfigError
from cnn_jax.kernels import layer_set as cpu_layer_set
from cnn_jax.metric_writers import MetricWriter
from cnn_jax.models import layer_set

# Set by a SIGTERM/SIGINT handler (cnn_jax.cli): the loop saves the latest state and returns.
STOP_REQUESTED = threading.Event()


def stop_requested(step: int) -> bool:
  """The default `should_stop`: a SIGTERM or Ctrl-C has arrived in this process."""
  del step
  return STOP_REQUESTED.is_set()


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
  # What the model predicts (cnn_jax.tasks): its loss and metrics. None = classification.
  task: Any = flax.struct.field(pytree_node=False, default=None)
  ten_crop: bool = flax.struct.field(pytree_node=False, default=False)  # evaluate 10 views

  def get_task(self):
    return self.task if self.task is not None else tasks.Classification(self.num_classes)


cross_entropy = tasks.cross_entropy  # per label, any leading shape


def _variables(state, params=None):
  variables = {'params': state.params if params is None else params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def train_step(state: TrainState, totals: dict, images, labels, perm, step_in_epoch, rng,
               cfg: StepConfig):
  """One SGD step on the `step_in_epoch`-th batch of the epoch order `perm` of the dataset
  (`images`, `labels`) that lives on the devices."""
  # The batch's indices are split over the devices first, so each device gathers only its own
  # part of the batch from its copy of the dataset (in a multi-process run, each process only
  # materialises its devices' share).
  idx = jax.lax.dynamic_slice_in_dim(perm, step_in_epoch * cfg.batch_size, cfg.batch_size)
  idx = jax.lax.with_sharding_constraint(idx, cfg.batch_sharding)
  x = jax.lax.with_sharding_constraint(images[idx], cfg.batch_sharding)
  y = jax.lax.with_sharding_constraint(labels[idx], cfg.batch_sharding)
  return batch_step(state, totals, x, y, rng, cfg)


def batch_step(state: TrainState, totals: dict, x, y, rng, cfg: StepConfig):
  """One SGD step on the uint8 batch (x, y), sharded over the batch axis (the streamed pipeline
  calls it directly).

  `totals` accumulates loss and accuracy on the device until the loop reads them at a log
  point, so no step waits for the host; it also keeps the first step whose loss was not finite.
  The task (`cfg.task`) gives the input, the loss and the accuracy (per pixel for segmentation).
  """
  task = cfg.get_task()
  aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  x, y = task.inputs(cfg.preprocess, x, y, aug_rng, train=True)

  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), x, train=True,
                                     rngs={'dropout': dropout_rng},
                                     mutable=['batch_stats', 'aux_logits'])
    loss = task.losses(logits, y, cfg.label_smoothing).mean()
    # Auxiliary classifiers (GoogLeNet) sow their logits; their losses are added with a weight.
    for aux in jax.tree.leaves(updates.get('aux_logits', {})):
      loss += cfg.aux_loss_weight * task.losses(aux, y, cfg.label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  param_updates = jax.tree.map(lambda u: u * state.plateau.scale, param_updates)
  state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                        opt_state=opt_state, batch_stats=updates.get('batch_stats', {}))
  n = jnp.float32(cfg.batch_size)
  first_bad = totals['first_nonfinite_step']
  totals = {
      'loss': totals['loss'] + loss * n,
      'correct': totals['correct'] + jnp.sum(task.correct(logits, y)),
      'count': totals['count'] + n,
      'first_nonfinite_step': jnp.where((first_bad < 0) & ~jnp.isfinite(loss), state.step,
                                        first_bad),
  }
  return state, totals


def evaluate(state: TrainState, images, labels, mask, cfg: StepConfig) -> dict:
  """The task's metrics over a padded split (classification: loss and accuracy; segmentation:
  also mean IoU), totals summed on the device in one jitted scan over its batches."""
  task = cfg.get_task()
  num_batches = images.shape[0] // cfg.batch_size

  def body(totals, i):
    take = lambda a: jax.lax.with_sharding_constraint(
        jax.lax.dynamic_slice_in_dim(a, i * cfg.batch_size, cfg.batch_size), cfg.batch_sharding)
    return evaluate_batch(state, totals, take(images), take(labels), take(mask), cfg), None

  totals, _ = jax.lax.scan(body, task.zero_totals(), jnp.arange(num_batches))
  return task.metrics(totals)


def evaluate_batch(state: TrainState, totals, images, labels, mask, cfg: StepConfig):
  """Adds one padded batch (uint8 images, labels, mask of the real examples) to the totals."""
  task = cfg.get_task()
  if cfg.ten_crop:  # the views' softmax averaged; its log serves as the logits
    probs = [jax.nn.softmax(state.apply_fn(_variables(state), v, train=False).astype(jnp.float32))
             for v in cfg.preprocess.ten_crop_views(images)]
    return task.accumulate(totals, jnp.log(sum(probs) / len(probs)), labels, mask)
  x, y = task.inputs(cfg.preprocess, images, labels, None, train=False)
  logits = state.apply_fn(_variables(state), x, train=False)
  return task.accumulate(totals, logits, y, mask)


class StreamedEval:
  """Evaluation of a streamed split: its batches decoded on the host, summed on the devices."""

  def __init__(self, stream: streaming.Stream, split: str, cfg: StepConfig, sharding):
    task = cfg.get_task()
    self.stream, self.split, self.batch_size = stream, split.removesuffix('_10crop'), cfg.batch_size
    self.zero = jax.jit(task.zero_totals, out_shardings=sharding)
    self.add = parallel.CompiledTogether(jax.jit(functools.partial(evaluate_batch, cfg=cfg),
                                                 donate_argnums=(1,)), f'evaluate_{split}')
    self.metrics = jax.jit(task.metrics, out_shardings=sharding)

  def __call__(self, state: TrainState) -> dict:
    totals = self.zero()
    for batch in self.stream.eval_batches(self.split, self.batch_size):
      totals = self.add(state, totals, *batch)
    return self.metrics(totals)


def _fresh_totals() -> dict:
  totals = {k: jnp.zeros((), jnp.float32) for k in ('loss', 'correct', 'count')}
  totals['first_nonfinite_step'] = jnp.full((), -1, jnp.int32)  # -1: every loss was finite
  return totals


@functools.lru_cache(maxsize=None)
def _fresh_totals_on(sharding):
  # Made on the devices by a jitted function: a device_put from the host would make every
  # process compare its values with the others' first (a collective) at each log point.
  return jax.jit(_fresh_totals, out_shardings=sharding)


def zero_totals(sharding=None) -> dict:
  """Fresh metric totals; placed like the step's outputs so the step compiles once."""
  return _fresh_totals() if sharding is None else _fresh_totals_on(sharding)()


def create_train_state(model, tx, input_shape, rng, sharding, apply_fn=None) -> TrainState:
  """Initialises parameters (in train mode, so train-only heads exist) on every device."""
  def init(rng):
    dummy = jnp.zeros((2,) + tuple(input_shape), jnp.float32)
    variables = model.init({'params': rng, 'dropout': rng}, dummy, train=True)
    state = TrainState.create(apply_fn=apply_fn or model.apply, params=variables['params'], tx=tx,
                              batch_stats=variables.get('batch_stats', {}),
                              plateau=optim.PlateauState.create())
    return state.replace(step=jnp.zeros((), jnp.int32))  # strong int32, as after an update
  return jax.jit(init, out_shardings=sharding)(rng)


def check_input_shape(name: str, model, shape, label_shape=None) -> None:
  """Fails early with a ConfigError naming the fix when the data (images of `shape`, labels of
  `label_shape` per image when given) do not fit the model and its task."""
  expected = models.input_shape(name)
  hint = (f"Model {name!r} expects images of shape {expected} (H, W, C) but the data pipeline "
          f"yields {tuple(shape)}. Set --config.data.image_size to pad the images or "
          f"--config.data.crop_size to crop them, or pick a "
          f"model whose input fits (cnn_jax.models.input_shape(name)).")
  if models.spec(name).fixed_input and tuple(shape) != tuple(expected):
    raise ConfigError(hint)
  x = jax.ShapeDtypeStruct((1,) + tuple(shape), jnp.float32)
  try:
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  except ConfigError:  # a model field out of range (depth, shortcut): its own message
    raise
  except Exception as e:  # shape arithmetic failed somewhere inside the model
    raise ConfigError(f'{hint}\nUnderlying error: {e}') from e
  task = tasks.for_model(name, out.shape[-1])
  if out.ndim != task.output_rank:
    raise ConfigError(f'Model {name!r} returns outputs of shape {out.shape[1:]} per image, which '
                      f'does not fit its registered task {task.kind!r} (cnn_jax.models.spec).')
  problem = None if label_shape is None else task.check_labels(label_shape)
  if problem:
    fix = ('Pick a segmentation dataset (--config.data.dataset=mnist_segmentation or '
           'oxford_iiit_pet) or a classification model.' if task.kind == tasks.SEGMENTATION else
           'Pick a segmentation model (unet, unet_same) or a classification dataset.')
    raise ConfigError(f'Model {name!r} ({task.kind}) cannot train on this data: {problem}. {fix}')


@dataclasses.dataclass
class RunState:
  """The loop's bookkeeping, saved as JSON with every checkpoint (the 'meta' item).

  The keys are those of the plain dict that older checkpoints carry, so either restores.
  """
  best_value: float = math.inf  # the best validation objective so far (minimised)
  best_epoch: int | None = None  # epoch and step of the best checkpoint
  best_step: int | None = None
  bad_epochs: int = 0  # validations in a row without improvement (early stopping)
  stopped_early: bool = False
  train_seconds: float = 0.0  # timed training (compilation excluded), for images/s
  timed_images: int = 0
  wall_seconds: float = 0.0  # wall time of the run, summed over resumes
  epochs_done: int = 0

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: dict) -> 'RunState':
    """From a saved record; keys it does not know are ignored, missing ones take defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in names})


@dataclasses.dataclass
class Run:
  """What `setup` builds for one run; `train_loop`, `eval_point` and `final_results` use it."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  splits: datasets.Splits
  steps_per_epoch: int
  total_steps: int
  lr_fn: Callable[[int], Any]
  num_params: int
  book: RunState
  ckpts: checkpointing.Checkpoints
  writer: MetricWriter
  replicated: Any
  train_arrays: tuple | None  # (images, labels) on the devices; None when streamed
  eval_arrays: dict  # split -> (batch size, (images, labels, mask) on the devices)
  p_train_step: Callable
  p_permutation: Callable
  p_evaluate: dict
  data_rng: jax.Array
  step_rng: jax.Array
  diagnose: Callable | None = None
  stream: streaming.Stream | None = None  # data.pipeline='stream': batches decoded on the host
  layers: layer_set.LayerSet = layer_set.STOCK  # what the model computes with (config.cpu_kernels)
  load_start: float | None = dataclasses.field(default_factory=lambda: _load_average())  # sitting's
  last_tick: float = dataclasses.field(default_factory=time.time)

  @property
  def num_train(self) -> int:
    return self.splits.num_train

  def evaluate(self, split: str, state: TrainState) -> dict:
    arrays = self.eval_arrays[split][1]
    metrics = (self.p_evaluate[split](state) if self.stream is not None else
               self.p_evaluate[split](state, *arrays))
    return {k: parallel.host_scalar(v) for k, v in metrics.items()}

  def wall_time(self) -> float:
    """The run's wall time up to now, summed over resumes."""
    return self.book.wall_seconds + time.time() - self.last_tick

  def tick(self) -> None:
    """Adds the wall time since the last tick to the run's total, which survives resumes."""
    now = time.time()
    self.book.wall_seconds += now - self.last_tick
    self.last_tick = now

  def save(self, kind: str, step: int, state: TrainState) -> None:
    self.ckpts.save(kind, step, state, self.book.to_json())


def _selection_value(metric: str, val: dict) -> float:
  """The validation objective to minimise."""
  return val['loss'] if metric == 'val_loss' else -val['accuracy']


def _log(msg: str) -> None:
  if parallel.is_main_process():
    print(msg, file=sys.stderr, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       should_stop: Callable[[int], bool] | None = None,
                       command: str | None = None) -> dict:
  """Trains and evaluates; returns the contents of results.json.

  `should_stop(step)` is asked after every step whether this process wants to stop (default: a
  SIGTERM or Ctrl-C arrived); all processes agree on the step (the first check point after any
  of them asked), save the state there and return {'status': 'interrupted', 'step': ...}.
  Tests inject it to simulate a pre-emption at a given step.
  """
  config_base.validate(config)
  parallel.maybe_initialize_distributed(config.distributed)
  workdir = pathlib.Path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise checkpointing.WorkdirError(f'Cannot create the workdir {workdir}: {e}') from e
  with checkpointing.WorkdirLock(workdir):
    run, state = setup(config, workdir)
    failed = True
    try:
      state, halted = train_loop(run, state, should_stop or stop_requested)
      run.ckpts.wait()  # a failed background write surfaces here
      if halted:
        _log(f'Stopped at step {int(state.step)}; the state is saved. Rerun the same command '
             'to resume.')
        results = {'status': 'interrupted', 'step': int(state.step)}
      else:
        results = final_results(run, state, command)
      failed = False
      return results
    finally:
      _close(run, quiet=failed)


def _close(run: Run, quiet: bool) -> None:
  """Finishes background writes and closes files; while an error propagates, a second error
  here (the same full disk) is not allowed to replace it."""
  first_error = None
  closers = (run.ckpts.wait, run.ckpts.close, run.writer.close)
  if run.stream is not None:
    closers += (run.stream.close,)
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except  (close the rest, then raise)
      first_error = first_error or e
  if first_error is not None and not quiet:
    raise first_error


def setup(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> tuple[Run, TrainState]:
  """Data on the devices, the model, the jitted steps; the state restored from the latest
  checkpoint when there is one."""
  streamed = config.data.pipeline == 'stream'
  try:  # DataError: the files; ValueError: the config
    splits = streaming.load_dataset(config.data) if streamed else datasets.load(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  try:
    preprocess = input_pipeline.Preprocess.from_config(config.data, splits)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  input_shape = preprocess.output_shape(splits.image_shape)
  model = models.create(config.model, num_classes=splits.num_classes,
                        dtype=precision.compute_dtype(config.dtype), **config.model_kwargs)
  check_input_shape(config.model, model, input_shape, () if streamed else splits.train[1].shape[1:])
  if (tasks.for_model(config.model, splits.num_classes).kind == tasks.SEGMENTATION
      and (preprocess.crop_size or preprocess.pca_jitter_std)):
    raise ConfigError('config.data.crop_size and config.data.pca_jitter_std are for classification;'
                      ' a segmentation mask would not follow them. Set both to 0 (use '
                      'data.random_crop_padding and data.horizontal_flip, which move the mask).')

  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size)
  num_train = splits.num_train
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds the {num_train} training '
                      f'images. Did you mean {num_train // jax.device_count() * jax.device_count()}'
                      ' or less?')
  total_steps = config.num_steps or config.num_epochs * steps_per_epoch
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch, total_steps)
  tx = optim.create_optimizer(config, lr_fn)

  root_rng = jax.random.key(config.seed)
  init_rng, data_rng, step_rng = (jax.random.fold_in(root_rng, i) for i in range(3))
  replicated = parallel.replicated(mesh)
  layers = cpu_layer_set.for_config(config)  # the CPU kernels, or JAX's own ops
  state = create_train_state(model, tx, input_shape, init_rng, replicated,
                             apply_fn=layer_set.bind(model.apply, layers))
  # Transfer learning: source weights under a new head, frozen parts (config.init_from,
  # config.trainable); the workdir's own checkpoint, restored below, takes precedence.
  state = transfer.prepare(config, config.model, model, state, replicated, workdir)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

  parallel.barrier('setup')  # the processes meet before orbax's first barrier
  ckpts = checkpointing.Checkpoints(workdir)
  writer = MetricWriter(workdir)
  book = RunState()
  try:
    restored = ckpts.restore('latest', state)
    writer.truncate_after(-1 if restored is None else int(restored[0].step))  # drop what a
    # killed run logged after its last checkpoint (all of it when it had none)
    if restored is not None:
      state, meta = restored
      book = RunState.from_json(meta)
      _log(f'Resuming from step {int(state.step)} (checkpoint in {workdir / "checkpoints"}).')
    if parallel.is_main_process():
      checkpointing.write_text(workdir / 'config.json',
                               config.to_json_best_effort(indent=2, sort_keys=True))
  except BaseException:
    ckpts.close()
    writer.close()
    raise

  step_cfg = StepConfig(batch_size=config.batch_size, num_classes=splits.num_classes,
                        label_smoothing=config.label_smoothing,
                        aux_loss_weight=config.aux_loss_weight, preprocess=preprocess,
                        batch_sharding=parallel.batch_sharded(mesh),
                        task=tasks.for_model(config.model, splits.num_classes))
  p_permutation = jax.jit(functools.partial(input_pipeline.epoch_permutation,
                                            num_examples=num_train), out_shardings=replicated)
  if streamed:  # batches decoded on the host, in the order the on-device pipeline would use
    stream = streaming.Stream(
        splits, config.batch_size, steps_per_epoch, data_rng, step_cfg.batch_sharding,
        workers=config.data.stream_workers,
        prefetch=config.data.stream_prefetch,
        train_eval=streaming.Subset(splits.train, train_eval_indices(num_train, config.data)))
    train_arrays, eval_arrays, p_evaluate = None, {}, {}
    for split, count in (('val', len(splits.val)), ('test', len(splits.test)),
                         ('train_eval', len(stream.train_eval))):
      if count:
        bs = _eval_batch_size(config.eval_batch_size, count)
        eval_arrays[split] = (bs, None)
        p_evaluate[split] = StreamedEval(stream, split, step_cfg.replace(batch_size=bs), replicated)
    if config.ten_crop_test and 'test' in eval_arrays:
      bs = eval_arrays['test'][0]
      eval_arrays['test_10crop'] = (bs, None)
      p_evaluate['test_10crop'] = StreamedEval(
          stream, 'test_10crop', step_cfg.replace(batch_size=bs, ten_crop=True), replicated)
    p_train_step = jax.jit(functools.partial(batch_step, cfg=step_cfg), donate_argnums=(0, 1))
  else:  # the dataset lives on the devices; batches are gathered inside jit
    stream = None
    train_arrays = input_pipeline.device_put_replicated(splits.train, replicated)
    eval_arrays = {}
    for split, (images, labels) in (('val', splits.val), ('test', splits.test),
                                    ('train_eval', train_eval_subset(splits.train, config.data))):
      if len(images):
        bs = _eval_batch_size(config.eval_batch_size, len(images))
        eval_arrays[split] = (bs, input_pipeline.device_put_replicated(
            input_pipeline.padded_eval_arrays(images, labels, bs), replicated))
    if config.ten_crop_test and 'test' in eval_arrays:
      eval_arrays['test_10crop'] = eval_arrays['test']
    p_evaluate = {split: parallel.CompiledTogether(jax.jit(functools.partial(
        evaluate, cfg=step_cfg.replace(batch_size=bs, ten_crop=split == 'test_10crop'))),
        f'evaluate_{split}') for split, (bs, _) in eval_arrays.items()}
    p_train_step = jax.jit(functools.partial(train_step, cfg=step_cfg), donate_argnums=(0, 1))
  run = Run(
      config=config, workdir=workdir, splits=splits, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, lr_fn=lr_fn, num_params=num_params, book=book, ckpts=ckpts,
      writer=writer, replicated=replicated, train_arrays=train_arrays, eval_arrays=eval_arrays,
      p_train_step=parallel.CompiledTogether(p_train_step, 'train_step'),
      p_permutation=p_permutation, p_evaluate=p_evaluate,
      data_rng=data_rng, step_rng=step_rng, stream=stream, layers=layers)
  if config.gradient_diagnostics:
    diag_x, diag_y = (streaming.decode_batch(splits.train, np.arange(config.batch_size))
                      if streamed else
                      (splits.train[0][:config.batch_size], splits.train[1][:config.batch_size]))
    run.diagnose = diagnostics.make_diagnostics_fn(layer_set.bind(model.apply, layers), preprocess,
                                                   step_cfg, diag_x, diag_y)
    if int(state.step) == 0:
      writer.write(0, 'diagnostics', run.diagnose(state))
  return run, state


def train_loop(run: Run, state: TrainState,
               should_stop: Callable[[int], bool]) -> tuple[TrainState, bool]:
  """Steps from the restored step to the end; returns the last state and whether it halted
  on a stop request (after saving it)."""
  config, book = run.config, run.book
  start_step = int(state.step)
  bar = _progress_bar(config, run.total_steps, start_step)
  totals = zero_totals(run.replicated)
  interval_start, interval_images, first_interval = time.time(), 0, True
  perm = None
  stop_wanted = False  # this process was asked to stop; the processes agree at check points
  check_every = 1 if parallel.process_count() == 1 else config.stop_check_every_steps
  halted = False
  if run.stream is not None:
    run.stream.start(start_step, run.total_steps)
  for step in range(start_step, run.total_steps):
    if book.stopped_early:
      break
    epoch, step_in_epoch = divmod(step, run.steps_per_epoch)
    if run.stream is not None:
      inputs = run.stream.next_train()
    else:
      if perm is None or step_in_epoch == 0:
        perm = run.p_permutation(run.data_rng, epoch)
      inputs = (*run.train_arrays, perm, step_in_epoch)
    state, totals = run.p_train_step(state, totals, *inputs, run.step_rng)
    done = step + 1
    interval_images += config.batch_size
    end_of_epoch = done % run.steps_per_epoch == 0 or done == run.total_steps
    eval_now = is_eval_point(config, done, end_of_epoch, epoch, run.total_steps)
    checkpoint_now = end_of_epoch or eval_now or (
        config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0)
    stop_wanted = stop_wanted or bool(should_stop(done))
    stop_now = (done % check_every == 0 or done == run.total_steps) and parallel.any_process(
        stop_wanted)

    if done % config.log_every_steps == 0 or end_of_epoch or checkpoint_now or stop_now:
      host = jax.device_get(totals)
      _check_finite(run, state, host, done)  # before anything is saved
    if done % config.log_every_steps == 0 or end_of_epoch:
      elapsed = time.time() - interval_start
      train_metrics = {'loss': host['loss'] / host['count'],
                       'accuracy': host['correct'] / host['count'],
                       'learning_rate': float(run.lr_fn(done - 1)) * float(state.plateau.scale),
                       'images_per_s': interval_images / max(elapsed, 1e-9)}
      run.writer.write(done, 'train', train_metrics)
      if not first_interval:  # the first interval includes compilation
        book.train_seconds += elapsed
        book.timed_images += interval_images
      first_interval = False
      if bar is not None:
        bar.update(done - bar.n)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_metrics['loss']:.4f}",
                        acc=f"{train_metrics['accuracy']:.4f}",
                        img_s=f"{train_metrics['images_per_s']:.0f}", refresh=False)
      totals = zero_totals(run.replicated)
      interval_start, interval_images = time.time(), 0

    if end_of_epoch:
      book.epochs_done = epoch + 1
    if eval_now:
      state = eval_point(run, state, done, epoch, bar)
    if checkpoint_now or stop_now:
      run.tick()
      run.save('latest', done, state)
      if eval_now or end_of_epoch:
        interval_start = time.time()  # validation and saving are not training time
    if stop_now:
      halted = True
      break
  if bar is not None:
    bar.close()
  return state, halted


def is_eval_point(config, done: int, end_of_epoch: bool, epoch: int, total_steps: int) -> bool:
  """Validation cadence: every eval_every_steps steps, or every eval_every_epochs epochs; and
  always after the last step."""
  if done == total_steps:
    return True
  if config.eval_every_steps:
    return done % config.eval_every_steps == 0
  return end_of_epoch and (epoch + 1) % config.eval_every_epochs == 0


def eval_point(run: Run, state: TrainState, done: int, epoch: int, bar=None) -> TrainState:
  """Everything done at an evaluation point: the curves (train_eval, test_curve, diagnostics),
  then validation, selection of the best checkpoint, reduce-on-plateau and early stopping."""
  config, book, writer = run.config, run.book, run.writer
  if 'train_eval' in run.eval_arrays:
    writer.write(done, 'train_eval', run.evaluate('train_eval', state))
  if config.eval_test_curve and 'test' in run.eval_arrays:
    # wall_time_s: the run's wall time so far, summed over resumes (time to accuracy).
    writer.write(done, 'test_curve', {**run.evaluate('test', state), 'wall_time_s': run.wall_time()})
  if run.diagnose is not None:
    writer.write(done, 'diagnostics', run.diagnose(state))
  if 'val' not in run.eval_arrays:
    return state
  val = run.evaluate('val', state)
  writer.write(done, 'val', val)
  value = _selection_value(config.selection_metric, val)
  improved = value < book.best_value
  tie = value == book.best_value and config.selection_ties_to_latest
  book.bad_epochs = 0 if improved else book.bad_epochs + 1  # a tie is no progress
  if improved or tie:
    book.best_value, book.best_epoch, book.best_step = value, epoch + 1, done
    run.save('best', done, state)
  if config.lr_schedule == 'plateau':
    state = state.replace(plateau=optim.plateau_update(
        state.plateau, value, patience=config.plateau_patience, factor=config.lr_decay_factor,
        min_scale=config.plateau_min_scale, cooldown=config.plateau_cooldown,
        rtol=config.plateau_rtol))
  if 0 < config.early_stopping_patience <= book.bad_epochs:
    book.stopped_early = True
    _log(f'Early stopping after epoch {epoch + 1}: {config.selection_metric} has not improved '
         f'for {book.bad_epochs} validations (best at epoch {book.best_epoch}).')
  line = f"val loss {val['loss']:.4f}  val accuracy {val['accuracy']:.4f}"
  if bar is not None:
    bar.write(f'epoch {epoch + 1:3d}  step {done:7d}  {line}')
  elif not config.progress_bar:
    _log(f'step {done}/{run.total_steps}  {line}')
  return state


def _check_finite(run: Run, state: TrainState, host_totals: dict, done: int) -> None:
  """Stops the run when a loss was not finite; the last checkpoint saved before it is kept."""
  bad_step = int(host_totals['first_nonfinite_step'])  # the step (1-based) whose loss it was
  if bad_step < 0:
    return
  run.ckpts.wait()
  last = run.ckpts.latest_step()
  epoch = (bad_step - 1) // run.steps_per_epoch
  lr = float(run.lr_fn(bad_step - 1)) * float(state.plateau.scale)
  kept = (f'The last good checkpoint (step {last}) is kept in {run.workdir / "checkpoints"}'
          if last is not None else 'No checkpoint had been written yet')
  raise FloatingPointError(
      f'Training diverged: the train loss is not finite from step {bad_step} (epoch {epoch + 1}, '
      f'learning rate {lr:.4g}); the run stopped at step {done} without saving. {kept}. Lower '
      '--config.learning_rate, add --config.warmup or --config.grad_clip_norm, and start in a '
      'new --workdir.')


def final_results(run: Run, state: TrainState, command: str | None) -> dict:
  """Test figures from the best checkpoint (the latest when there is no validation split), the
  run's figures and environment; written to results.json by process 0."""
  config, book, splits = run.config, run.book, run.splits
  best = run.ckpts.restore('best', state) if 'val' in run.eval_arrays else None
  final_state = best[0] if best is not None else state
  results = {
      'status': 'stopped_early' if book.stopped_early else 'completed',
      'name': config.name or config.model,
      'model': config.model,
      'task': models.spec(config.model).task,  # metrics: loss, accuracy (+ mean_iou: segmentation)
      'num_params': run.num_params,
      'dataset': (f'{splits.name} ({splits.source})' if splits.source in config_base.DATA_SOURCES
                  else splits.source),  # a folder's own label, e.g. 'CIFAR-10 (JPEG copy)'
      'num_train': run.num_train, 'num_val': _count(splits.val), 'num_test': _count(splits.test),
      'steps': int(state.step), 'epochs': book.epochs_done, 'steps_per_epoch': run.steps_per_epoch,
      'best_epoch': book.best_epoch, 'best_step': book.best_step,
      'selection_metric': config.selection_metric,
      'cpu_kernels': config.cpu_kernels, 'layer_set': run.layers.name,
  }
  if best is not None:
    results.update({f'val_{k}': v for k, v in run.evaluate('val', final_state).items()})
  if 'train_eval' in run.eval_arrays:  # training error of the last state, without augmentation
    results.update({f'final_train_eval_{k}': v
                    for k, v in run.evaluate('train_eval', state).items()})
    results['num_train_eval'] = min(config.data.train_eval_size, run.num_train)
  if 'test' in run.eval_arrays:
    test = run.evaluate('test', final_state)
    run.writer.write(int(state.step), 'test', test)
    results.update({f'test_{k}': v for k, v in test.items()})
  if 'test_10crop' in run.eval_arrays:  # AlexNet's test-time averaging over 10 views
    results.update({f'test_10crop_{k}': v
                    for k, v in run.evaluate('test_10crop', final_state).items()})
  run.tick()
  results.update({
      'wall_time_s': book.wall_seconds,
      'train_images_per_s': book.timed_images / book.train_seconds if book.train_seconds else None,
      **parallel.device_summary(),
      'host_cpu': report.host_cpu(),
      # the machine's load when this sitting of the run started and ended (1-minute average)
      'load_average_start': run.load_start, 'load_average_end': _load_average(),
      'cpu_count': os.cpu_count(),
      'runtime': runtime.applied(),
      'jax_version': jax.__version__,
      'command': command if command is not None else shlex.join([sys.executable] + sys.argv),
  })
  if parallel.is_main_process():
    checkpointing.write_text(run.workdir / 'results.json', json.dumps(results, indent=2) + '\n')
  return results


def _load_average() -> float | None:
  return os.getloadavg()[0] if hasattr(os, 'getloadavg') else None


def train_eval_subset(train, data_config):
  """The fixed train images whose error, without augmentation, is the training error."""
  images, labels = train
  idx = train_eval_indices(len(images), data_config)
  return images[idx], labels[idx]


def train_eval_indices(num_train: int, data_config) -> np.ndarray:
  size = min(data_config.train_eval_size, num_train)
  return np.sort(np.random.default_rng(data_config.split_seed + 1).permutation(num_train)[:size])


def _count(split) -> int:
  """Examples in a split: (images, labels) arrays or a streamed source."""
  return len(split[0]) if isinstance(split, tuple) else len(split)


def _eval_batch_size(requested: int, num_examples: int) -> int:
  """At most `requested`, no larger than the split, and a multiple of the device count."""
  n = jax.device_count()
  size = min(requested, num_examples)
  return max(n, -(-size // n) * n)


def _progress_bar(config, total_steps, start_step):
  if not (config.progress_bar and parallel.is_main_process()):
    return None
  return tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                   mininterval=1.0, file=sys.stderr)
