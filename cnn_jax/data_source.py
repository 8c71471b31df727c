"""Where the training loop's batches come from: one interface, two sources.

`DeviceData`: the whole dataset lives on the devices and each batch is gathered inside the jitted
step by the epoch permutation (MNIST, CIFAR). `StreamedData` (`data.pipeline='stream'`): batches
are decoded on the host a few steps ahead, in the same order, and sharded onto the devices
(cnn_jax.streaming). The loop calls `start`, `train_step`, `evaluate` and `close`, and never asks
which one it has.
"""
from __future__ import annotations

import functools
from typing import Protocol

import jax
import numpy as np

from cnn_jax import datasets, input_pipeline, parallel, steps, streaming

# The splits a source can evaluate: validation, test, the fixed training subset without
# augmentation (the training error), and the test split in AlexNet's 10 views.
SPLITS = ('val', 'test', 'train_eval', 'test_10crop')


class DataSource(Protocol):
  splits: frozenset[str]  # which of SPLITS this run has

  def start(self, start_step: int, total_steps: int) -> None: ...
  def train_step(self, state, totals, step: int, rng) -> tuple: ...
  def evaluate(self, split: str, state) -> dict: ...
  def diagnostics_batch(self, size: int) -> tuple[np.ndarray, np.ndarray]: ...
  def close(self) -> None: ...


def create(splits, config, step_cfg: steps.StepConfig, replicated, data_rng,
           steps_per_epoch: int) -> DataSource:
  """The source `config.data.pipeline` asks for."""
  source = StreamedData if config.data.pipeline == 'stream' else DeviceData
  return source(splits, config, step_cfg, replicated, data_rng, steps_per_epoch)


class DeviceData:
  """The dataset on the devices; batches gathered inside the jitted step."""

  def __init__(self, splits: datasets.Splits, config, step_cfg, replicated, data_rng,
               steps_per_epoch: int):
    self.host_train = splits.train
    self.train_arrays = input_pipeline.device_put_replicated(splits.train, replicated)
    self.eval_arrays, self.evaluators = {}, {}
    for split, (images, labels) in (('val', splits.val), ('test', splits.test),
                                    ('train_eval', train_eval_subset(splits.train, config.data))):
      if len(images):
        bs = eval_batch_size(config.eval_batch_size, len(images))
        self.eval_arrays[split] = input_pipeline.device_put_replicated(
            input_pipeline.padded_eval_arrays(images, labels, bs), replicated)
        self._add_evaluator(split, step_cfg.replace(batch_size=bs))
        if split == 'test' and config.ten_crop_test:
          self.eval_arrays['test_10crop'] = self.eval_arrays['test']
          self._add_evaluator('test_10crop', step_cfg.replace(batch_size=bs, ten_crop=True))
    self.splits = frozenset(self.evaluators)
    self.step = parallel.CompiledTogether(
        jax.jit(functools.partial(steps.train_step, cfg=step_cfg), donate_argnums=(0, 1)),
        'train_step')
    self.permutation = jax.jit(functools.partial(input_pipeline.epoch_permutation,
                                                 num_examples=splits.num_train),
                               out_shardings=replicated)
    self.data_rng, self.steps_per_epoch = data_rng, steps_per_epoch
    self._perm = None

  def _add_evaluator(self, split: str, cfg: steps.StepConfig) -> None:
    self.evaluators[split] = parallel.CompiledTogether(
        jax.jit(functools.partial(steps.evaluate, cfg=cfg)), f'evaluate_{split}')

  def start(self, start_step: int, total_steps: int) -> None:
    del start_step, total_steps
    self._perm = None

  def train_step(self, state, totals, step: int, rng):
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    if self._perm is None or step_in_epoch == 0:
      self._perm = self.permutation(self.data_rng, epoch)
    return self.step(state, totals, *self.train_arrays, self._perm, step_in_epoch, rng)

  def evaluate(self, split: str, state) -> dict:
    return self.evaluators[split](state, *self.eval_arrays[split])

  def diagnostics_batch(self, size: int):
    return self.host_train[0][:size], self.host_train[1][:size]

  def close(self) -> None:
    pass


class StreamedData:
  """Batches decoded on the host, in the order the on-device pipeline would use."""

  def __init__(self, splits, config, step_cfg, replicated, data_rng, steps_per_epoch: int):
    self.host_train = splits.train
    self.stream = streaming.Stream(
        splits, config.batch_size, steps_per_epoch, data_rng, step_cfg.batch_sharding,
        workers=config.data.stream_workers, prefetch=config.data.stream_prefetch,
        train_eval=streaming.Subset(splits.train,
                                    train_eval_indices(splits.num_train, config.data)))
    self.evaluators = {}
    for split, count in (('val', len(splits.val)), ('test', len(splits.test)),
                         ('train_eval', len(self.stream.train_eval))):
      if count:
        cfg = step_cfg.replace(batch_size=eval_batch_size(config.eval_batch_size, count))
        self.evaluators[split] = StreamedEval(self.stream, split, cfg, replicated)
        if split == 'test' and config.ten_crop_test:
          self.evaluators['test_10crop'] = StreamedEval(
              self.stream, 'test_10crop', cfg.replace(ten_crop=True), replicated)
    self.splits = frozenset(self.evaluators)
    self.step = parallel.CompiledTogether(
        jax.jit(functools.partial(steps.batch_step, cfg=step_cfg), donate_argnums=(0, 1)),
        'train_step')

  def start(self, start_step: int, total_steps: int) -> None:
    self.stream.start(start_step, total_steps)

  def train_step(self, state, totals, step: int, rng):
    del step  # the stream yields the batches in order
    return self.step(state, totals, *self.stream.next_train(), rng)

  def evaluate(self, split: str, state) -> dict:
    return self.evaluators[split](state)

  def diagnostics_batch(self, size: int):
    return streaming.decode_batch(self.host_train, np.arange(size))

  def close(self) -> None:
    self.stream.close()


class StreamedEval:
  """Evaluation of a streamed split: its batches decoded on the host, summed on the devices."""

  def __init__(self, stream: streaming.Stream, split: str, cfg: steps.StepConfig, sharding):
    task = cfg.get_task()
    self.stream, self.split, self.batch_size = stream, split.removesuffix('_10crop'), cfg.batch_size
    self.zero = jax.jit(task.zero_totals, out_shardings=sharding)
    self.add = parallel.CompiledTogether(jax.jit(functools.partial(steps.evaluate_batch, cfg=cfg),
                                                 donate_argnums=(1,)), f'evaluate_{split}')
    self.metrics = jax.jit(task.metrics, out_shardings=sharding)

  def __call__(self, state: steps.TrainState) -> dict:
    totals = self.zero()
    for batch in self.stream.eval_batches(self.split, self.batch_size):
      totals = self.add(state, totals, *batch)
    return self.metrics(totals)


def train_eval_subset(train, data_config):
  """The fixed train images whose error, without augmentation, is the training error."""
  images, labels = train
  idx = train_eval_indices(len(images), data_config)
  return images[idx], labels[idx]


def train_eval_indices(num_train: int, data_config) -> np.ndarray:
  size = min(data_config.train_eval_size, num_train)
  return np.sort(np.random.default_rng(data_config.split_seed + 1).permutation(num_train)[:size])


def eval_batch_size(requested: int, num_examples: int) -> int:
  """At most `requested`, no larger than the split, and a multiple of the device count."""
  n = jax.device_count()
  size = min(requested, num_examples)
  return max(n, -(-size // n) * n)
