"""Training-only data augmentation on the device, by name (`config.augment.name`), from the
registry `AUGMENTATIONS`.

An augmentation is built from its config section, `build(augment_config) -> augment`, and
transforms one example: `augment(image [H, W(, C)] float32 in [0, 1], rng, hparams) -> image` of
the same shape. The steps vmap it over the batch with one key per example, derived from the run's
seed, the step and the example's index, so a resumed run, 1 or N devices and a vectorized sweep
see the same augmented images. Evaluation never augments.
"""

import jax
import jax.numpy as jnp

from mlp_mnist import registry

AUGMENTATIONS = registry.Registry('augmentation', 'augment')

_PROBABILITY = ((float, int), lambda v: 0 <= v <= 1, 'in [0, 1]')


@AUGMENTATIONS.register('none')
def build_none(augment_config):
  del augment_config
  return None


def shift(image: jax.Array, dy: jax.Array, dx: jax.Array, max_shift: int) -> jax.Array:
  """`image` [H, W, ...] moved by (dy, dx) pixels (|d| <= max_shift), filled with zeros."""
  h, w = image.shape[:2]
  pad = [(max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (image.ndim - 2)
  padded = jnp.pad(image, pad)
  start = (max_shift - dy, max_shift - dx) + (0,) * (image.ndim - 2)
  return jax.lax.dynamic_slice(padded, start, image.shape[:2] + image.shape[2:])[:h, :w]


@AUGMENTATIONS.register(
    'random_shift', defaults={'random_shift.max_shift': 2},
    schema={'random_shift.max_shift': ((int,), lambda v: v >= 0, 'a non-negative integer')})
def build_random_shift(augment_config):
  """Shifts each image by a uniform whole number of pixels in [-max_shift, max_shift] along
  each axis (a random crop of the zero-padded image)."""
  max_shift = augment_config.random_shift.max_shift

  def augment(image, rng, hparams):
    del hparams
    dy, dx = jax.random.randint(rng, (2,), -max_shift, max_shift + 1)
    return shift(image, dy, dx, max_shift)

  return augment


@AUGMENTATIONS.register('random_flip', defaults={'random_flip.probability': 0.5},
                        schema={'random_flip.probability': _PROBABILITY},
                        per_trial=('random_flip.probability',))
def build_random_flip(augment_config):
  """Mirrors each image left-right with `probability` (for natural images; not for digits)."""
  del augment_config

  def augment(image, rng, hparams):
    flip = jax.random.bernoulli(rng, hparams['random_flip.probability'])
    return jnp.where(flip, image[:, ::-1], image)

  return augment
