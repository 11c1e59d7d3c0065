"""The decoded cache: a TFDS dataset's arrays in one `.npz`, so later runs skip TensorFlow.

The file is named after the data's source, so other data never reuses it: the dataset's name and
version, a hash of `config.data.data_dir` when one is given, and a hash of the IDX files' paths,
sizes and modification times when `config.data.local_dir` is given (`mnist-3.0.1.npz`,
`mnist-3.0.1-dir1a2b...-idx3c4d....npz`). A file that cannot be read is rebuilt, with a warning.
"""

import contextlib
import hashlib
import os
import re
import sys
import zipfile
import zlib

import numpy as np

from mlp_mnist.data import dataset as dataset_lib

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'mlp_mnist')
_ARRAYS = ('images', 'labels')


def cache_path(data_config, idx_identity: str = '') -> str | None:
  """Where the TFDS dataset of `data_config` is cached (None with `use_cache` off)."""
  if not data_config.use_cache:
    return None
  cache_dir = os.path.expanduser(data_config.cache_dir or DEFAULT_CACHE_DIR)
  name = re.sub(r'[^A-Za-z0-9._-]', '_', f'{data_config.name}-{data_config.version}')
  if data_config.data_dir:
    where = os.path.abspath(os.path.expanduser(data_config.data_dir))
    name += f'-dir{hashlib.sha1(where.encode()).hexdigest()[:10]}'
  if idx_identity:
    name += f'-idx{idx_identity}'
  return os.path.join(cache_dir, f'{name}.npz')


def read(path: str) -> dataset_lib.Dataset | None:
  """The cached dataset; None when there is none, or, after a one-line warning, when the file is
  damaged or not ours."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      splits = {s: tuple(f[f'{s}_{k}'] for k in _ARRAYS) for s in dataset_lib.SPLITS}
      meta = {k: f[k] for k in ('num_classes', 'class_names', 'name') if k in f.files}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    _warn(path, f'{type(e).__name__}: {e}')
    return None
  shapes = {images.shape[1:] for images, _ in splits.values()}
  for images, labels in splits.values():
    if (images.dtype != np.uint8 or images.ndim not in (3, 4) or len(shapes) != 1
        or labels.shape != images.shape[:1] or labels.dtype != np.int32):
      _warn(path, 'unexpected array shapes or dtypes')
      return None
  # Caches written before the class count was stored hold MNIST-like data with every class present.
  num_classes = int(meta['num_classes']) if 'num_classes' in meta else int(
      max(labels.max() for _, labels in splits.values() if labels.size)) + 1
  return dataset_lib.Dataset(
      train=splits['train'], test=splits['test'], num_classes=num_classes,
      name=str(meta['name']) if 'name' in meta else '',
      class_names=tuple(str(n) for n in meta.get('class_names', ())))


def write(path: str, dataset: dataset_lib.Dataset) -> bool:
  """Writes the cache file whole (a temporary file renamed into place); returns whether it did.

  A cache directory that cannot be written (read-only or full; HOME included) is a one-line
  warning: the run goes on without the cache, and no partial file is left.
  """
  tmp = f'{path}.tmp{os.getpid()}.npz'
  arrays = {f'{s}_{k}': a for s in dataset_lib.SPLITS for k, a in zip(_ARRAYS, dataset[s])}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(tmp, **arrays, num_classes=np.int64(dataset.num_classes),
             name=np.str_(dataset.name), class_names=np.asarray(dataset.class_names, dtype=np.str_))
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    reason = e.strerror or str(e) or type(e).__name__
    print(f'warning: cannot write the dataset cache {path} ({reason}); training goes on without '
          'it (free disk space or set --config.data.cache_dir to a writable folder to keep one, '
          'or --config.data.use_cache=False to silence this).', file=sys.stderr)
    return False
  return True


def _warn(path: str, reason: str) -> None:
  reason = ' '.join(reason.split())  # One line, whatever the library's message.
  print(f'warning: the dataset cache {path} is damaged ({reason}); rebuilding it.',
        file=sys.stderr)
