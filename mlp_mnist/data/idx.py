"""MNIST's own IDX files: read and checked, and written into a real TFDS dataset for offline use.

`read_as_tfds_mnist(idx_dir)` gives the arrays TFDS' mnist:3.0.1 would give from these files, in
its order, without TensorFlow (a training run from local files goes straight to the decoded cache).
`prepare_from_idx(idx_dir, data_dir)` writes the registered TFDS dataset (mnist, fashion_mnist or
kmnist: the builders that read this format) from the four standard IDX files (`.gz` or raw), after
checking their headers and sizes; the TFDS builder then reads it with `download=False`. Installed
packages are never modified. The format is MNIST's, so MNIST's shape lives here and nowhere else.
"""

import gzip
import hashlib
import json
import os
import tempfile
import zlib

import numpy as np

from mlp_mnist.data import dataset as dataset_lib
from mlp_mnist.data import tfds_source

DataError = dataset_lib.DataError

IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
MNIST_IMAGE_SHAPE = (28, 28)
MNIST_NUM_CLASSES = 10
# The TFDS dataset whose order `read_as_tfds_mnist` reproduces (tests/test_data.py checks it).
TFDS_MNIST = ('mnist', '3.0.1')
HOW_TO_PROVIDE = tfds_source.HOW_TO_PROVIDE


def find_idx_files(idx_dir: str) -> dict[str, tuple[str, str]]:
  """Paths of the four IDX files in `idx_dir`, each raw or `.gz`; a clear error if one is missing."""
  if not os.path.isdir(idx_dir):
    raise DataError(f'IDX directory {idx_dir} does not exist; {HOW_TO_PROVIDE}')
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


def files_identity(idx_dir: str) -> str:
  """A short hash of the IDX files' paths, sizes and modification times (the cache's key)."""
  stats = []
  for path in sorted(p for pair in find_idx_files(idx_dir).values() for p in pair):
    stat = os.stat(path)
    stats.append((os.path.abspath(path), stat.st_size, stat.st_mtime_ns))
  return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:12]


def read_idx(path: str, expected_magic: int) -> np.ndarray:
  """Reads and checks one IDX file (header, dimensions, size); raw or gzip-compressed."""
  try:
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
      content = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f'{path} cannot be read ({type(e).__name__}: {e}); the file is damaged: '
                    'replace it with an intact copy.') from None
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
  if ndim == 3 and dims[1:] != MNIST_IMAGE_SHAPE:
    raise DataError(f'{path} holds {dims[1]}x{dims[2]} images, expected 28x28.')
  expected = header_len + int(np.prod(dims))
  if len(content) != expected:
    raise DataError(f'{path} is {len(content)} bytes but its header announces {dims} '
                    f'({expected} bytes): the file is truncated or corrupt; replace it.')
  return np.frombuffer(content, np.uint8, offset=header_len).reshape(dims)


def read_idx_dir(idx_dir: str) -> dict[str, dataset_lib.Split]:
  """Reads and cross-checks the four IDX files of `idx_dir`."""
  splits = {}
  for split, (images_path, labels_path) in find_idx_files(idx_dir).items():
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
      raise DataError(f'{images_path} holds {len(images)} images but {labels_path} holds '
                      f'{len(labels)} labels; the two files must come from the same split.')
    if labels.size and labels.max() >= MNIST_NUM_CLASSES:
      raise DataError(f'{labels_path} has label {labels.max()}, outside 0..9; replace it.')
    splits[split] = (images, labels.astype(np.int32))
  return splits


def read_as_tfds_mnist(idx_dir: str) -> dataset_lib.Dataset:
  """The dataset TFDS' mnist:3.0.1 builder writes from these IDX files and reads back: the same
  arrays in the same order, without importing TensorFlow or TFDS (~1.5-6 s) or writing TFRecords.

  TFDS stores a split's examples sorted by the md5 hash of the split's name followed by the
  example's key (its index in the IDX file): `tensorflow_datasets.core.hashing`, whose order is
  part of each dataset's version.
  """
  splits = {}
  for split, (images, labels) in read_idx_dir(idx_dir).items():
    keys = [int(hashlib.md5(f'{split}{i}'.encode()).hexdigest(), 16) for i in range(len(labels))]
    order = np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
    splits[split] = (images[order], labels[order])
  return dataset_lib.Dataset(
      train=splits['train'], test=splits['test'], num_classes=MNIST_NUM_CLASSES,
      name=':'.join(TFDS_MNIST), class_names=tuple(str(c) for c in range(MNIST_NUM_CLASSES)))


def prepare_from_idx(idx_dir: str, data_dir: str | None, name: str = 'mnist',
                     version: str = '3.0.1') -> str:
  """Writes the TFDS dataset `name:version` into `data_dir` from local IDX files; returns its path.

  A no-op when it is already prepared. Works for the builders that read the MNIST IDX format
  (mnist, fashion_mnist, kmnist). Uses only public TFDS APIs and leaves installed packages untouched.
  """
  splits = read_idx_dir(idx_dir)  # Checks every file before TFDS writes anything.
  tfds = tfds_source.import_tfds()
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
    for split, (images, labels) in splits.items():
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
