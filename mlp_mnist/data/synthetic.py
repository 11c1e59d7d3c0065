"""A learnable stand-in for MNIST, for tests, smoke runs and benchmarks without the real files."""

import numpy as np

from mlp_mnist.data import dataset as dataset_lib


def banded_digits(num_train: int = 256, num_test: int = 100,
                  seed: int = 0) -> dataset_lib.Dataset:
  """uint8 [N, 28, 28] noise in which each of the 10 classes lights up its own band of rows, and
  int32 labels."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 * label + 4:2 * label + 7, 4:24] = 255
    return images, labels

  return dataset_lib.Dataset(train=split(num_train), test=split(num_test), num_classes=10)
