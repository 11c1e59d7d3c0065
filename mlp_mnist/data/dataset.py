"""What every source returns: uint8 images and int32 labels per split, with the shape of one image
and the number of classes, both taken from the data itself."""

import dataclasses
from typing import Any

import numpy as np

from mlp_mnist import errors

Split = tuple[np.ndarray, np.ndarray]
SPLITS = ('train', 'test')


class DataError(errors.UserError, RuntimeError):
  """The dataset cannot be found, read or prepared; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images `uint8[N, H, W]` (one channel) or `uint8[N, H, W, C]`, labels `int32[N]` in
  `0..num_classes-1`, per split; `validation` is held out of the training examples (or None).

  `dataset['train']` is `dataset.train`.
  """

  train: Split
  test: Split
  num_classes: int
  validation: Split | None = None
  name: str = ''
  class_names: tuple[str, ...] = ()
  # Where the arrays came from: 'config' (what config.data names, which evaluation can load
  # again) or 'memory' (arrays handed to the library, which evaluation must be given).
  source: str = 'memory'

  @property
  def image_shape(self) -> tuple[int, ...]:
    """One example's shape, e.g. (28, 28) or (32, 32, 3): what the model is built for."""
    return tuple(int(d) for d in self.train[0].shape[1:])

  def __getitem__(self, split: str) -> Split:
    value = getattr(self, split, None) if split in ('train', 'validation', 'test') else None
    if value is None:
      raise KeyError(split)
    return value

  def info(self) -> dict[str, Any]:
    """The dataset's description as JSON values (a run's `dataset.json`)."""
    return {'name': self.name, 'image_shape': list(self.image_shape),
            'num_classes': self.num_classes, 'class_names': list(self.class_names),
            'num_train': len(self.train[1]),
            'num_validation': len(self.validation[1]) if self.validation is not None else 0,
            'num_test': len(self.test[1]), 'source': self.source}

