"""Training losses by name (`config.loss.name`), from the registry `LOSSES`.

A loss is built from its config section, `build(loss_config) -> loss`, and computes one value per
example: `loss(logits [batch, classes] float32, labels [batch] int, params, hparams) -> [batch]`.
`hparams` holds the component's per-trial keys as arrays in the train state (a sweep over them is
one program); `params` lets a loss add a penalty. The training objective is the masked mean of the
per-example values; evaluation always reports plain cross-entropy and accuracy beside it.
"""

import jax
import jax.numpy as jnp
import optax

from mlp_mnist import registry

LOSSES = registry.Registry('loss', 'loss')

_STRENGTH = ((float, int), lambda v: v >= 0, 'a non-negative number')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example (the evaluation loss)."""
  # One-hot labels: the integer-label form's gradient is a scatter, several times slower on CPUs.
  return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))


def squared_norm(params) -> jax.Array:
  """The sum of squares of every parameter, in float32."""
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(params))


@LOSSES.register('cross_entropy')
def build_cross_entropy(loss_config):
  del loss_config
  return lambda logits, labels, params, hparams: cross_entropy(logits, labels)


@LOSSES.register('label_smoothing', defaults={'label_smoothing.smoothing': 0.1},
                 schema={'label_smoothing.smoothing': ((float, int), lambda v: 0 <= v < 1,
                                                       'in [0, 1)')},
                 per_trial=('label_smoothing.smoothing',))
def build_label_smoothing(loss_config):
  """Cross-entropy against labels smoothed towards uniform by `smoothing`."""
  del loss_config

  def loss(logits, labels, params, hparams):
    del params
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  hparams['label_smoothing.smoothing'])
    return optax.softmax_cross_entropy(logits, targets)

  return loss


@LOSSES.register('l2', defaults={'l2.weight': 1e-4}, schema={'l2.weight': _STRENGTH},
                 per_trial=('l2.weight',))
def build_l2(loss_config):
  """Cross-entropy plus `weight` times the parameters' squared L2 norm (the same for every
  example, so the batch mean adds it once)."""
  del loss_config

  def loss(logits, labels, params, hparams):
    return cross_entropy(logits, labels) + hparams['l2.weight'] * squared_norm(params)

  return loss
