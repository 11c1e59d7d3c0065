"""Your own arrays: a `.npz` file named by `config.data.npz_path`.

The file holds `x_train`, `y_train`, `x_test`, `y_test`: images `[N, H, W]` (one channel) or
`[N, H, W, C]`, as uint8 in 0..255 or as floats in [0, 1] (stored as uint8, `round(255 x)`, which
is exact for data that came from 8-bit images); labels integers in 0..K-1. K is the optional
scalar `num_classes`, else the length of the optional `class_names` (strings), else the largest
label + 1. Write one with

    np.savez('mydata.npz', x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

Every check names the file and the array. The file is read directly (it needs no cache).
"""

import os
import zipfile
import zlib

import numpy as np

from mlp_mnist.data import dataset as dataset_lib

DataError = dataset_lib.DataError
REQUIRED = ('x_train', 'y_train', 'x_test', 'y_test')


def load(path: str) -> dataset_lib.Dataset:
  """The dataset in the `.npz` file at `path`, checked; DataError naming the file and the array."""
  shown = path
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise DataError(f'{shown} does not exist; set --config.data.npz_path to a .npz file holding '
                    f'{", ".join(REQUIRED)}.')
  with open(path, 'rb') as f:
    magic = f.read(6)
  if magic == b'\x93NUMPY':
    raise DataError(f'{shown} is a single .npy array, not an .npz archive; save your arrays '
                    'with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).')
  if not magic.startswith(b'PK'):
    raise DataError(f'{shown} is not an .npz file (not a zip archive); save your arrays with '
                    'np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...).')
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in REQUIRED if k not in f.files]
      if missing:
        raise DataError(f'{shown} has no array {missing[0]} (it holds {sorted(f.files)}); it needs '
                        f'{", ".join(REQUIRED)}.')
      arrays = {k: f[k] for k in f.files if k in REQUIRED + ('num_classes', 'class_names')}
  except DataError:
    raise
  except ValueError as e:
    if 'pickle' in str(e):
      raise DataError(f'{shown} holds Python objects (pickled arrays); save plain numeric arrays '
                      'with np.savez.') from None
    raise DataError(f'{shown} is not a readable .npz file ({_one_line(e)}); save your arrays '
                    'with np.savez again.') from None
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f'{shown} is not a readable .npz file ({_one_line(e)}); it is damaged or '
                    'truncated: save your arrays with np.savez again.') from None
  train = _split(shown, arrays, 'train')
  test = _split(shown, arrays, 'test')
  if train[0].shape[1:] != test[0].shape[1:]:
    raise DataError(f'{shown}: x_train holds images of shape {train[0].shape[1:]} but x_test '
                    f'{test[0].shape[1:]}; both splits need one image shape.')
  num_classes, class_names = _classes(shown, arrays)
  for split, (_, labels) in (('train', train), ('test', test)):
    largest = int(labels.max())
    if num_classes is not None and largest >= num_classes:
      raise DataError(f'{shown}: y_{split} has label {largest}, outside the {num_classes} classes '
                      f'0..{num_classes - 1} (num_classes/class_names); fix the labels.')
  if num_classes is None:
    num_classes = max(int(train[1].max()), int(test[1].max())) + 1
  if num_classes < 2:
    raise DataError(f'{shown}: y_train and y_test hold a single class; a classifier needs two '
                    'or more.')
  if train[0].ndim == 4 and train[0].shape[-1] == 1:  # One channel: [N, H, W], as MNIST.
    train, test = ((x[..., 0], y) for x, y in (train, test))
  return dataset_lib.Dataset(train=train, test=test, num_classes=num_classes,
                             name=os.path.basename(path), class_names=class_names)


def _one_line(error: Exception) -> str:
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _split(shown: str, arrays: dict, split: str) -> dataset_lib.Split:
  images, labels = arrays[f'x_{split}'], arrays[f'y_{split}']
  if images.ndim not in (3, 4):
    raise DataError(f'{shown}: x_{split} has shape {images.shape}; images must be [N, H, W] or '
                    '[N, H, W, C].')
  if len(images) == 0:
    raise DataError(f'{shown}: x_{split} is empty; the {split} split needs examples.')
  if 0 in images.shape[1:]:
    raise DataError(f'{shown}: x_{split} has shape {images.shape}, an image dimension of zero; '
                    'every image needs a height, a width (and channels) of at least 1.')
  if labels.ndim != 1:
    raise DataError(f'{shown}: y_{split} has shape {labels.shape}; labels must be one integer '
                    'per image, [N] (not one-hot).')
  if len(labels) != len(images):
    raise DataError(f'{shown}: y_{split} holds {len(labels)} labels but x_{split} holds '
                    f'{len(images)} images; they must have the same length.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{shown}: y_{split} has dtype {labels.dtype}; labels must be integers '
                    '0..K-1 (e.g. y.astype(np.int32)).')
  if labels.min() < 0:
    raise DataError(f'{shown}: y_{split} has label {labels.min()}; labels must be integers 0..K-1.')
  if labels.max() > np.iinfo(np.int32).max:  # Before the cast, which would wrap it.
    raise DataError(f'{shown}: y_{split} has label {labels.max()}, too large for a class index; '
                    'labels must be integers 0..K-1.')
  return _images(shown, images, split), labels.astype(np.int32)


def _images(shown: str, images: np.ndarray, split: str) -> np.ndarray:
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating):
    low, high = float(np.min(images)), float(np.max(images))
    if not (0.0 <= low and high <= 1.0):  # Also catches NaN.
      raise DataError(f'{shown}: x_{split} is {images.dtype} with values in [{low}, {high}]; '
                      'float images must be in [0, 1] (or store uint8 0..255).')
    return np.round(images * 255.0).astype(np.uint8)
  raise DataError(f'{shown}: x_{split} has dtype {images.dtype}; images must be uint8 (0..255) '
                  'or floats in [0, 1].')


def _classes(shown: str, arrays: dict) -> tuple[int | None, tuple[str, ...]]:
  names = ()
  num_classes = None
  if 'class_names' in arrays:
    names_array = arrays['class_names']
    if names_array.ndim != 1 or not np.issubdtype(names_array.dtype, np.str_):
      raise DataError(f'{shown}: class_names must be a 1-D array of strings, one per class.')
    names = tuple(str(n) for n in names_array)
    num_classes = len(names)
  if 'num_classes' in arrays:
    value = arrays['num_classes']
    if value.shape != () or not np.issubdtype(value.dtype, np.integer) or int(value) < 1:
      raise DataError(f'{shown}: num_classes must be one positive integer (a 0-d array).')
    if num_classes is not None and int(value) != num_classes:
      raise DataError(f'{shown}: num_classes is {int(value)} but class_names names '
                      f'{num_classes} classes; they must agree.')
    num_classes = int(value)
  return num_classes, names
