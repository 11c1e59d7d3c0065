"""Datasets as uint8 arrays on the host: TFDS (online, or prepared offline from IDX files) behind a
decoded cache. `load_dataset(config.data)` is the entry point; see `pipeline.py`."""

from mlp_mnist.data.pipeline import DataError
from mlp_mnist.data.pipeline import Dataset
from mlp_mnist.data.pipeline import IMAGE_SHAPE
from mlp_mnist.data.pipeline import NUM_CLASSES
from mlp_mnist.data.pipeline import load_dataset
from mlp_mnist.data.pipeline import prepare_from_idx

__all__ = ['DataError', 'Dataset', 'IMAGE_SHAPE', 'NUM_CLASSES', 'load_dataset', 'prepare_from_idx']
