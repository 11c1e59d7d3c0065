"""Four simulated CPU devices for every test, set before JAX starts its backend."""

import os
import sys

import jax
import numpy as np
import pytest

jax.config.update('jax_num_cpu_devices', 4)
jax.config.update('jax_platforms', 'cpu')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'configs'))

import default  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def config():
  """The default config, with data reading disabled (tests pass datasets in)."""
  return default.get_config()


def synthetic_dataset(num_train: int = 256, num_test: int = 100, seed: int = 0):
  """Learnable fake MNIST: each class lights up its own band of rows."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
      images[i, 2 * label + 4:2 * label + 7, 4:24] = 255
    return images, labels

  return {'train': split(num_train), 'test': split(num_test)}


@pytest.fixture
def dataset():
  return synthetic_dataset()
