"""`load_dataset(config.data)`: the dataset a config names, from whichever source holds it.

- `config.data.npz_path` set: your own arrays (`npz.py`).
- Otherwise the TFDS dataset `config.data.name:version` (`tfds_source.py`), downloaded and prepared
  by TFDS, read from `config.data.data_dir`, or, for the MNIST-format datasets, prepared offline
  from the IDX files in `config.data.local_dir` (`idx.py`); mnist:3.0.1 is read from those files
  directly, in TFDS' order, without TensorFlow. Its arrays go to a decoded cache keyed by the
  source (`cache.py`), so later runs never import TensorFlow.
"""

import dataclasses

from mlp_mnist.data import cache
from mlp_mnist.data import dataset as dataset_lib
from mlp_mnist.data import idx
from mlp_mnist.data import npz
from mlp_mnist.data import tfds_source


def load_dataset(data_config) -> dataset_lib.Dataset:
  """The train and test splits as uint8 images and int32 labels, with shape and classes."""
  return dataclasses.replace(_load(data_config), source='config')


def _load(data_config) -> dataset_lib.Dataset:
  if data_config.npz_path:
    return npz.load(data_config.npz_path)
  # A wrong IDX path fails here, before TensorFlow's slow import.
  identity = idx.files_identity(data_config.local_dir) if data_config.local_dir else ''
  path = cache.cache_path(data_config, identity)
  cached = cache.read(path) if path else None
  if cached is not None:
    return cached
  if data_config.local_dir and (data_config.name, data_config.version) == idx.TFDS_MNIST:
    dataset = idx.read_as_tfds_mnist(data_config.local_dir)
  else:
    dataset = _load_from_tfds(data_config)
  if path:
    cache.write(path, dataset)
  return dataset


def _load_from_tfds(data_config) -> dataset_lib.Dataset:
  tfds = tfds_source.import_tfds()
  builder = tfds_source.builder(tfds, data_config)
  tfds_source.features(builder)  # A dataset of the wrong kind fails before any download.
  if not builder.is_prepared():
    if data_config.local_dir:
      idx.prepare_from_idx(data_config.local_dir, tfds_source.data_dir(data_config),
                           data_config.name, data_config.version)
      builder = tfds_source.builder(tfds, data_config)
    else:
      tfds_source.download_and_prepare(builder, data_config)
  return tfds_source.read_dataset(tfds, builder, data_config)
