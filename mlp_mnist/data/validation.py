"""The validation split: training examples held out by a fixed draw, the same for every seed.

`config.data.validation_split` is 0 (none), a count (a whole number >= 1: 10000 or 10000.0; 1.0,
which could mean all or one, is refused) or a fraction in (0, 1), as in Keras' `validation_split` (`n - int(n * (1 - fraction))` examples).
Unlike Keras, which holds out the last examples, the held-out ones are a uniform draw with a fixed
generator: data files sorted by class still give a representative split, and every trial of a
sweep, whatever its seed, validates on the same examples and trains on the same others.
"""

import dataclasses

import numpy as np

from mlp_mnist.data import dataset as dataset_lib

_DRAW_SEED = 20240613  # Fixed on purpose: never config.seed.


def is_validation_split(value: int | float) -> bool:
  """0, a whole count >= 1 or a fraction in (0, 1); not the float 1.0, which could mean all the
  examples (nothing left to train on) as well as one."""
  if isinstance(value, float) and value == 1:
    return False
  return value == 0 or 0 < value < 1 or (value >= 1 and float(value).is_integer())


def validation_size(validation_split: int | float, num_train: int) -> int:
  """How many of `num_train` training examples `validation_split` holds out."""
  if not is_validation_split(validation_split):
    raise dataset_lib.DataError(
        f'config.data.validation_split={validation_split!r} is neither a whole count of examples '
        '(1 for one) nor a fraction in (0, 1); choose one.')
  if 0 < validation_split < 1:
    size = num_train - int(num_train * (1 - validation_split))
  else:
    size = int(validation_split)
  if size and not 1 <= size < num_train:
    raise dataset_lib.DataError(
        f'config.data.validation_split={validation_split!r} holds out {size} of the {num_train} '
        'training examples, leaving none to train on (or none to validate); choose fewer.')
  return size


def validation_indices(num_train: int, size: int) -> np.ndarray:
  """The sorted indices of the `size` held-out examples among `num_train` (seed-independent)."""
  chosen = np.random.default_rng(_DRAW_SEED).permutation(num_train)[:size]
  return np.sort(chosen).astype(np.int64)


def hold_out_validation(dataset: dataset_lib.Dataset,
                        validation_split: int | float) -> dataset_lib.Dataset:
  """`dataset` with `validation_split` of its training examples moved to `validation`.

  The training examples keep their order. A split of 0 returns `dataset` itself (its training
  arrays untouched); so does a dataset that already has a validation split, which it keeps.
  """
  if dataset.validation is not None:
    return dataset
  images, labels = dataset.train
  size = validation_size(validation_split, len(labels))
  if not size:
    return dataset
  held_out = np.zeros(len(labels), bool)
  held_out[validation_indices(len(labels), size)] = True
  return dataclasses.replace(dataset, train=(images[~held_out], labels[~held_out]),
                             validation=(images[held_out], labels[held_out]))
