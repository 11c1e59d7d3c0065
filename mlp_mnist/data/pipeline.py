"""MNIST as uint8 arrays: TFDS (online, or prepared offline from the IDX files) behind a decoded cache.

`load_dataset(config.data)` returns `{'train': (images, labels), 'test': (images, labels)}` with
images `uint8[N, 28, 28]` and labels `int32[N]`. The first call reads the TFDS dataset and writes a
decoded `.npz` cache keyed by dataset name and version; later calls read the cache and never
import TensorFlow (whose import alone costs seconds).

Offline (air-gapped clusters, machines without internet): `prepare_from_idx(idx_dir, data_dir)` writes
the real TFDS dataset from the four standard IDX files (`.gz` or raw), checking their headers and
sizes; the registered TFDS builder then reads it with `download=False`. `load_dataset` does this by
itself when `config.data.local_dir` is set. Installed packages are never modified.
"""

import concurrent.futures
import gzip
import os
import socket
import tempfile
import urllib.parse

import numpy as np

from mlp_mnist import errors

SPLITS = ('train', 'test')
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'mlp_mnist')
_NETWORK_PROBE_TIMEOUT_SEC = 5.0


class DataError(errors.UserError, RuntimeError):
  """The dataset cannot be found, read or prepared; the message says what to do."""


Dataset = dict[str, tuple[np.ndarray, np.ndarray]]


def load_dataset(data_config) -> Dataset:
  """Returns the train and test splits as uint8 images and int32 labels."""
  cache_path = _cache_path(data_config)
  if cache_path is not None and os.path.exists(cache_path):
    try:
      return _read_cache(cache_path)
    except (OSError, ValueError, KeyError) as e:
      print(f'Ignoring unreadable dataset cache {cache_path} ({e}); rebuilding it.')
  if data_config.local_dir:
    find_idx_files(data_config.local_dir)  # A wrong path fails before TensorFlow's slow import.
  dataset = _load_from_tfds(data_config)
  if cache_path is not None:
    _write_cache(cache_path, dataset)
  return dataset


def _cache_path(data_config) -> str | None:
  if not data_config.use_cache:
    return None
  cache_dir = os.path.expanduser(data_config.cache_dir or DEFAULT_CACHE_DIR)
  return os.path.join(cache_dir, f'{data_config.name}-{data_config.version}.npz')


def _read_cache(path: str) -> Dataset:
  with np.load(path) as f:
    dataset = {s: (f[f'{s}_images'], f[f'{s}_labels']) for s in SPLITS}
  for images, labels in dataset.values():
    if images.dtype != np.uint8 or images.ndim != 3 or labels.shape != images.shape[:1]:
      raise ValueError('unexpected array shapes or dtypes')
  return dataset


def _write_cache(path: str, dataset: Dataset) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.npz'
  np.savez(tmp, **{f'{s}_{k}': a for s, (im, lb) in dataset.items()
                   for k, a in (('images', im), ('labels', lb))})
  os.replace(tmp, path)


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


def _load_from_tfds(data_config) -> Dataset:
  tfds = import_tfds()
  data_dir = os.path.expanduser(data_config.data_dir) if data_config.data_dir else None
  spec = f'{data_config.name}:{data_config.version}'
  try:
    builder = tfds.builder(spec, data_dir=data_dir)
  except Exception as e:  # tfds raises several types for unknown names and versions.
    raise DataError(f'TFDS has no dataset {spec} ({e}); set --config.data.name and '
                    '--config.data.version to one it has.') from e
  if not builder.is_prepared():
    if data_config.local_dir:
      prepare_from_idx(data_config.local_dir, data_dir, data_config.name, data_config.version)
      builder = tfds.builder(spec, data_dir=data_dir)
    elif not data_config.download:
      raise DataError(f'{data_config.name} is not prepared in {builder.data_dir} and downloads '
                      'are off; ' + _HOW_TO_PROVIDE)
    else:
      host = urllib.parse.urlparse(getattr(builder, 'URL', '')).hostname
      _check_reachable(host or 'storage.googleapis.com', data_config.name, builder.data_dir)
      builder.download_and_prepare()
  return {split: _as_arrays(tfds, builder, split) for split in SPLITS}


_HOW_TO_PROVIDE = ('put the four MNIST IDX files (.gz or raw) in a directory and pass '
                   '--config.data.local_dir=DIR (or run scripts/prepare_data.py --idx_dir DIR), or '
                   'point --config.data.data_dir at an already prepared TFDS data directory.')


def _check_reachable(host: str, name: str, data_dir: str) -> None:
  """Fails within seconds, instead of tfds' minutes of retries, when the download host is unreachable."""

  def connect():
    socket.create_connection((host, 443), timeout=_NETWORK_PROBE_TIMEOUT_SEC).close()

  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  try:
    pool.submit(connect).result(timeout=_NETWORK_PROBE_TIMEOUT_SEC + 1)
  except (OSError, concurrent.futures.TimeoutError) as e:
    raise DataError(f'{name} is not prepared in {data_dir} and its download host {host} is '
                    f'unreachable ({e or "timed out"}); {_HOW_TO_PROVIDE}') from None
  finally:
    pool.shutdown(wait=False)


def _as_arrays(tfds, builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  # Fixed-size batches, not batch_size=-1: the latter aborts TensorFlow under tfds' mock_data.
  batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000)))
  images = np.concatenate([b['image'] for b in batches]).astype(np.uint8)
  labels = np.concatenate([b['label'] for b in batches]).astype(np.int32)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f'{builder.name} images have shape {images.shape[1:]}, expected 28x28 '
                    'grayscale; choose an MNIST-format dataset in --config.data.name.')
  return images, labels


def find_idx_files(idx_dir: str) -> dict[str, tuple[str, str]]:
  """Paths of the four IDX files in `idx_dir`, each raw or `.gz`; a clear error if one is missing."""
  if not os.path.isdir(idx_dir):
    raise DataError(f'IDX directory {idx_dir} does not exist; {_HOW_TO_PROVIDE}')
  found = {}
  for split, names in IDX_FILES.items():
    paths = []
    for name in names:
      candidates = [os.path.join(idx_dir, n) for n in (name, f'{name}.gz')]
      existing = [p for p in candidates if os.path.isfile(p)]
      if not existing:
        raise DataError(f'{idx_dir} has neither {name} nor {name}.gz; it must hold the four '
                        f'MNIST IDX files: {", ".join(n for p in IDX_FILES.values() for n in p)}.')
      paths.append(existing[0])
    found[split] = tuple(paths)
  return found


def read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Reads and checks one IDX file (header, dimensions, size); raw or gzip-compressed."""
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      content = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'{path} cannot be read ({e}); replace it with an intact copy.') from e
  ndim = 3 if expected_magic == IMAGES_MAGIC else 1
  header_len = 4 + 4 * ndim
  if len(content) < header_len:
    raise DataError(f'{path} is {len(content)} bytes, too short for an IDX header; '
                    'replace it with an intact copy.')
  magic = int.from_bytes(content[:4], 'big')
  if magic != expected_magic:
    kind = 'images' if expected_magic == IMAGES_MAGIC else 'labels'
    raise DataError(f'{path} has IDX magic number {magic}, expected {expected_magic} for an '
                    f'{kind} file; check that the file names match their contents.')
  dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  if ndim == 3 and dims[1:] != IMAGE_SHAPE:
    raise DataError(f'{path} holds {dims[1]}x{dims[2]} images, expected 28x28.')
  expected = header_len + int(np.prod(dims))
  if len(content) != expected:
    raise DataError(f'{path} is {len(content)} bytes but its header announces {dims} '
                    f'({expected} bytes): the file is truncated or corrupt; replace it.')
  return np.frombuffer(content, np.uint8, offset=header_len).reshape(dims)


def read_idx_dir(idx_dir: str) -> Dataset:
  """Reads and cross-checks the four IDX files of `idx_dir`."""
  dataset = {}
  for split, (images_path, labels_path) in find_idx_files(idx_dir).items():
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
      raise DataError(f'{images_path} holds {len(images)} images but {labels_path} holds '
                      f'{len(labels)} labels; the two files must come from the same split.')
    if labels.size and labels.max() >= NUM_CLASSES:
      raise DataError(f'{labels_path} has label {labels.max()}, outside 0..9; replace it.')
    dataset[split] = (images, labels.astype(np.int32))
  return dataset


def prepare_from_idx(idx_dir: str, data_dir: str | None, name: str = 'mnist',
                     version: str = '3.0.1') -> str:
  """Writes the TFDS dataset `name:version` into `data_dir` from local IDX files; returns its path.

  A no-op when it is already prepared. Works for the builders that read the MNIST IDX format
  (mnist, fashion_mnist, kmnist). Uses only public TFDS APIs and leaves installed packages untouched.
  """
  dataset = read_idx_dir(idx_dir)  # Checks every file before TFDS writes anything.
  tfds = import_tfds()
  from tensorflow_datasets.image_classification import mnist as tfds_mnist  # pylint: disable=g-import-not-at-top
  registered = tfds.builder_cls(name)
  if not (isinstance(registered, type) and issubclass(registered, tfds_mnist.MNIST)):
    raise DataError(f'TFDS dataset {name} is not in the MNIST IDX format; offline preparation '
                    'supports mnist, fashion_mnist and kmnist.')
  if str(registered.VERSION) != version:
    raise DataError(f'this TFDS release writes {name}:{registered.VERSION}, not {version}; set '
                    f'--config.data.version={registered.VERSION}.')
  with tempfile.TemporaryDirectory(prefix='mlp_mnist_idx_') as raw_dir:
    gen_kwargs = {}
    for split, (images, labels) in dataset.items():
      images_path = os.path.join(raw_dir, f'{split}-images')
      labels_path = os.path.join(raw_dir, f'{split}-labels')
      # The builder's own reader skips the 16- and 8-byte headers, so write them back unchanged.
      _write_idx(images_path, IMAGES_MAGIC, images)
      _write_idx(labels_path, LABELS_MAGIC, labels.astype(np.uint8))
      gen_kwargs[split] = dict(num_examples=len(images), data_path=images_path,
                               label_path=labels_path)

    def split_generators(self, dl_manager):
      del self, dl_manager
      return [tfds.core.SplitGenerator(name=s, gen_kwargs=kw) for s, kw in gen_kwargs.items()]

    local_builder_cls = type(registered)(
        f'Local{registered.__name__}', (registered,),
        {'name': name, '_split_generators': split_generators, '__module__': __name__},
        skip_registration=True)
    builder = local_builder_cls(data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(builder.data_path)


def _write_idx(path: str, magic: int, array: np.ndarray) -> None:
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with open(path, 'wb') as f:
    f.write(header)
    f.write(np.ascontiguousarray(array, np.uint8).tobytes())
