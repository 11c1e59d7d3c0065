"""Learnable fake MNIST for tests (importable without conftest's device set-up)."""

from mlp_mnist.data import synthetic


def synthetic_dataset(num_train: int = 256, num_test: int = 100, seed: int = 0):
  """Learnable fake MNIST: each class lights up its own band of rows."""
  return synthetic.banded_digits(num_train, num_test, seed)
