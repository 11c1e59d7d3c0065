"""TFDS image-classification datasets: any with `image` and `label` features, by name and version.

Online, TFDS downloads and prepares the dataset; offline, it reads TFDS' data directory
(`config.data.data_dir`). The image shape and the classes come from the builder's `info.features`.
TensorFlow, TFDS' engine, is imported only here and only when a dataset is read through TFDS.
"""

import concurrent.futures
import os
import re
import socket
import urllib.parse

import numpy as np

from mlp_mnist.data import dataset as dataset_lib

DataError = dataset_lib.DataError

HOW_TO_PROVIDE = ('download it where the network is reachable and point --config.data.data_dir '
                  'at that TFDS data directory; for mnist, fashion_mnist or kmnist, put the four '
                  'IDX files (.gz or raw) in a directory and pass --config.data.local_dir=DIR (or '
                  'run scripts/prepare_data.py --idx_dir DIR); or train on your own arrays with '
                  '--config.data.npz_path=FILE.npz.')
_NETWORK_PROBE_TIMEOUT_SEC = 5.0
_READ_BATCH = 10_000


def import_tfds():
  """Imports tensorflow_datasets with TensorFlow hidden from every accelerator."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # TensorFlow is only the input library's engine: it must never take GPU or TPU memory.
  try:
    tf.config.set_visible_devices([], 'GPU')
    tf.config.set_visible_devices([], 'TPU')
  except RuntimeError:  # TensorFlow was already initialized by its caller (Keras benchmarks).
    pass
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  return tfds


def data_dir(data_config) -> str | None:
  return os.path.expanduser(data_config.data_dir) if data_config.data_dir else None


def builder(tfds, data_config):
  """The TFDS builder `config.data.name:version` names; a clear error for an unknown one."""
  spec = f'{data_config.name}:{data_config.version}'
  try:
    return tfds.builder(spec, data_dir=data_dir(data_config))
  except Exception as e:  # tfds raises several types for unknown names and versions.
    error = e
  try:
    version = tfds.builder_cls(data_config.name.split('/')[0]).VERSION
  except Exception:  # pylint: disable=broad-except
    raise DataError(f'TFDS has no dataset named {data_config.name!r} (tfds.list_builders() lists '
                    'them); set --config.data.name to one of them, or train on your own arrays '
                    'with --config.data.npz_path=FILE.npz.') from None
  if str(version) != data_config.version:
    raise DataError(f'this TFDS release has {data_config.name}:{version}, not {spec}; set '
                    f'--config.data.version={version}.') from None
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:300]
  raise DataError(f'TFDS cannot build {spec} ({reason}); check --config.data.data_dir.') from None


def download_and_prepare(tfds_builder, data_config) -> None:
  """Downloads and prepares the dataset, failing fast when downloads are off or impossible."""
  if not data_config.download:
    raise DataError(f'{data_config.name} is not prepared in {tfds_builder.data_dir} and downloads '
                    'are off; ' + HOW_TO_PROVIDE)
  host = urllib.parse.urlparse(getattr(tfds_builder, 'URL', '')).hostname
  check_reachable(host or 'storage.googleapis.com', data_config.name, tfds_builder.data_dir)
  tfds_builder.download_and_prepare()


def check_reachable(host: str, name: str, where: str) -> None:
  """Fails within seconds, instead of tfds' minutes of retries, when the download host is
  unreachable."""

  def connect():
    socket.create_connection((host, 443), timeout=_NETWORK_PROBE_TIMEOUT_SEC).close()

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  try:
    pool.submit(connect).result(timeout=_NETWORK_PROBE_TIMEOUT_SEC + 1)
  except (OSError, concurrent.futures.TimeoutError) as e:
    raise DataError(f'{name} is not prepared in {where} and its download host {host} is '
                    f'unreachable ({e or "timed out"}); {HOW_TO_PROVIDE}') from None
  finally:
    pool.shutdown(wait=False)


def features(tfds_builder) -> tuple[tuple[int, ...], int, tuple[str, ...]]:
  """(image shape, number of classes, class names) from the builder's `info.features`."""
  name = tfds_builder.info.full_name
  feature_dict = tfds_builder.info.features
  keys = list(feature_dict.keys()) if hasattr(feature_dict, 'keys') else []
  if 'image' not in keys or 'label' not in keys:
    raise DataError(f'TFDS dataset {name} has features {keys}, not `image` and `label`; choose '
                    'an image-classification dataset in --config.data.name.')
  shape = tuple(feature_dict['image'].shape)
  if None in shape or len(shape) != 3:
    raise DataError(f'TFDS dataset {name} has images of shape {shape} (None: varying sizes); '
                    'only datasets of one fixed image size can be trained on as they are.')
  label = feature_dict['label']
  num_classes = getattr(label, 'num_classes', None)
  if not num_classes:
    raise DataError(f'TFDS dataset {name} has no class count for its `label` feature; choose a '
                    'dataset whose labels are a ClassLabel.')
  names = tuple(str(n) for n in (getattr(label, 'names', None) or ()))
  image_shape = shape[:2] if shape[2] == 1 else shape  # One channel: [H, W], as MNIST.
  return tuple(int(d) for d in image_shape), int(num_classes), names


def read(tfds, tfds_builder, split: str, image_shape: tuple[int, ...]) -> dataset_lib.Split:
  """One split as uint8 images of `image_shape` and int32 labels, in the builder's order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (loaded already, by tfds)
  try:
    # Fixed-size batches, not batch_size=-1: the latter aborts TensorFlow under tfds' mock_data.
    batches = list(tfds.as_numpy(tfds_builder.as_dataset(split=split, batch_size=_READ_BATCH)))
  except tf.errors.OpError as e:  # A missing, truncated or garbled tfrecord file.
    # TensorFlow wraps the reason in the op's name: '{{function_node ...}} reason [Op:...]'.
    reason = re.sub(r'\{\{.*?\}\}|\[Op:.*', '', e.message or str(e))
    reason = ' '.join(f'{type(e).__name__}: {reason}'.split())[:300]
    raise DataError(f'the TFDS data of {tfds_builder.info.full_name} in {tfds_builder.data_dir} '
                    f'is damaged ({reason}); delete that folder and prepare it again (download '
                    'it, or pass --config.data.local_dir=DIR with the IDX files), or point '
                    '--config.data.data_dir at a good copy.') from None
  images = np.concatenate([b['image'] for b in batches]).astype(np.uint8)
  labels = np.concatenate([b['label'] for b in batches]).astype(np.int32)
  return images.reshape((len(images),) + image_shape), labels


def read_dataset(tfds, tfds_builder, data_config) -> dataset_lib.Dataset:
  """The prepared builder's train and test splits, with its shape and classes."""
  image_shape, num_classes, class_names = features(tfds_builder)
  splits = tfds_builder.info.splits  # Empty under tfds.testing.mock_data: nothing to check.
  for split in dataset_lib.SPLITS:
    if splits and split not in splits:
      raise DataError(f'TFDS dataset {tfds_builder.info.full_name} has splits {list(splits)}, '
                      "no 'train' and 'test'; choose one that has both.")
  train, test = (read(tfds, tfds_builder, s, image_shape) for s in dataset_lib.SPLITS)
  return dataset_lib.Dataset(train=train, test=test, num_classes=num_classes,
                             name=f'{data_config.name}:{data_config.version}',
                             class_names=class_names)
