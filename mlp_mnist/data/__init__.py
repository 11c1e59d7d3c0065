"""Datasets as uint8 arrays on the host, each carrying its image shape and class count.

`load_dataset(config.data)` is the entry point (`pipeline.py`): TFDS datasets by name
(`tfds_source`; MNIST-format ones also offline from IDX files, `idx`), your own `.npz` arrays
(`npz`), a decoded cache keyed by the source (`cache`); `hold_out_validation` carves the
validation split (`validation`). Adding a source: docs/extending.md.
"""

from mlp_mnist.data.dataset import DataError
from mlp_mnist.data.dataset import Dataset
from mlp_mnist.data.idx import prepare_from_idx
from mlp_mnist.data.pipeline import load_dataset
from mlp_mnist.data.validation import hold_out_validation

__all__ = ['DataError', 'Dataset', 'hold_out_validation', 'load_dataset',
           'prepare_from_idx']
