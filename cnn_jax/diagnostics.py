"""Signal and gradient norms per block (claim C20: y = F(x) + x gives dy/dx = 1 + dF/dx).

For every top-level submodule of a model (stem, each residual or plain block, head), on one fixed
training batch in train mode (batch statistics, as the optimiser sees them):

* `act_rms/<block>`: the RMS of the block's output, the forward signal;
* `grad_rms/<block>`: the RMS over examples of |dL/d(output)|, the backward signal reaching the
  block (L = the per-example loss), which residual connections keep from vanishing;
* `param_grad/<block>`: the norm of the gradient of the mean loss w.r.t. the block's parameters.

Works for any registered model: outputs are found by intercepting the blocks' `__call__`, and a
zero perturbation added to each gives its gradient.
"""
from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import tasks


def _is_block_call(context) -> bool:
  path = context.module.scope.path if context.module.scope is not None else ()
  return context.method_name == '__call__' and len(path) == 1


@contextlib.contextmanager
def _perturbed_blocks(deltas: dict | None, outputs: dict):
  """Records each block's output in `outputs` and adds `deltas[name]` to it when given."""
  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_block_call(context) and isinstance(out, jax.Array):
      name = context.module.name
      if deltas is not None and name in deltas:
        out = out + deltas[name]
      outputs[name] = out
    return out
  with nn.intercept_methods(interceptor):
    yield


def make_diagnostics_fn(apply_fn, preprocess, step_cfg, images: np.ndarray, labels: np.ndarray):
  """Returns `fn(state) -> {metric: float}` on the fixed batch (images uint8 NHWC, labels int);
  `apply_fn` is the model's apply."""
  x = preprocess(jnp.asarray(images), None, train=False)
  y = jnp.asarray(labels)
  n = x.shape[0]

  def forward(params, batch_stats, deltas, outputs):
    variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
    with _perturbed_blocks(deltas, outputs):
      logits, _ = apply_fn(variables, x, train=True, mutable=['batch_stats', 'aux_logits'],
                              rngs={'dropout': jax.random.key(0)})
    return tasks.cross_entropy(logits, y, step_cfg.num_classes)  # per example

  def diagnose(params, batch_stats):
    shapes = {}
    jax.eval_shape(lambda p: forward(p, batch_stats, None, shapes), params)
    order = list(shapes)
    deltas = {k: jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}

    def loss(params, deltas):
      outputs = {}
      per_example = forward(params, batch_stats, deltas, outputs)
      return per_example.sum(), outputs

    (_, outputs), (g_params, g_deltas) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        params, deltas)
    metrics = {}
    for name in order:
      out = outputs[name].astype(jnp.float32)
      metrics[f'act_rms/{name}'] = jnp.sqrt(jnp.mean(out**2))
      per_example = g_deltas[name].reshape(n, -1).astype(jnp.float32)
      metrics[f'grad_rms/{name}'] = jnp.sqrt(jnp.mean(jnp.sum(per_example**2, axis=1)))
      if name in g_params:
        leaves = jax.tree.leaves(g_params[name])
        metrics[f'param_grad/{name}'] = jnp.sqrt(sum(jnp.sum(l**2) for l in leaves)) / n
    return metrics

  jitted = jax.jit(diagnose)

  def fn(state) -> dict:
    """Metrics in network order (jit returns dict keys sorted)."""
    shapes = {}
    jax.eval_shape(lambda p: forward(p, state.batch_stats, None, shapes), state.params)
    values = jax.device_get(jitted(state.params, state.batch_stats))
    return {f'{kind}/{name}': float(values[f'{kind}/{name}'])
            for kind in ('act_rms', 'grad_rms', 'param_grad') for name in shapes
            if f'{kind}/{name}' in values}
  return fn


def block_names(record: dict, prefix: str) -> list[str]:
  """The block names of one metric kind in a diagnostics record, in network order."""
  return [k[len(prefix) + 1:] for k in record if k.startswith(prefix + '/')]
