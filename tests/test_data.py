import gzip
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mlp_mnist import data
from mlp_mnist.data import cache
from mlp_mnist.data import idx
from mlp_mnist.data import pipeline
from mlp_mnist.data import tfds_source

from conftest import synthetic_dataset


def _write_idx_dir(path, dataset, compress=('train',)):
  """Writes the four IDX files; the splits in `compress` gzip-compressed."""
  os.makedirs(path, exist_ok=True)
  for split, (images_name, labels_name) in idx.IDX_FILES.items():
    images, labels = dataset[split]
    for name, magic, array in ((images_name, idx.IMAGES_MAGIC, images),
                               (labels_name, idx.LABELS_MAGIC, labels)):
      content = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
      content += np.asarray(array, np.uint8).tobytes()
      if split in compress:
        with gzip.open(os.path.join(path, f'{name}.gz'), 'wb') as f:
          f.write(content)
      else:
        with open(os.path.join(path, name), 'wb') as f:
          f.write(content)


def _data_config(config, tmp_path, **overrides):
  data_config = config.data
  data_config.data_dir = str(tmp_path / 'tfds')
  data_config.cache_dir = str(tmp_path / 'cache')
  for key, value in overrides.items():
    data_config[key] = value
  return data_config


def _sorted(images, labels):
  order = np.lexsort((labels, images.reshape(len(images), -1).sum(1)))
  return images[order], labels[order]


def test_offline_preparation_writes_a_real_tfds_dataset(config, tmp_path):
  expected = synthetic_dataset(num_train=40, num_test=12, seed=3)
  _write_idx_dir(tmp_path / 'idx', expected)
  data_config = _data_config(config, tmp_path, local_dir=str(tmp_path / 'idx'))
  data.prepare_from_idx(data_config.local_dir, data_config.data_dir)  # scripts/prepare_data.py
  # The registered TFDS builder now reads it with download=False, as tfds.load would.
  tfds = tfds_source.import_tfds()
  test = tfds.as_numpy(tfds.load('mnist', split='test', data_dir=data_config.data_dir, download=False,
                                 batch_size=-1))
  assert test['image'].shape == (12, 28, 28, 1)
  from_tfds = tfds_source.read_dataset(tfds, tfds_source.builder(tfds, data_config), data_config)
  for split in ('train', 'test'):
    for got, want in zip(_sorted(*from_tfds[split]), _sorted(*expected[split])):
      np.testing.assert_array_equal(got, want)
  # Training from the IDX files reads them directly: TFDS' arrays, in TFDS' order.
  dataset = pipeline.load_dataset(data_config)
  assert (dataset.image_shape, dataset.num_classes) == ((28, 28), 10)
  assert (dataset.name, dataset.class_names) == (from_tfds.name, from_tfds.class_names)
  for split in ('train', 'test'):
    images, labels = dataset[split]
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, from_tfds[split][0])
    np.testing.assert_array_equal(labels, from_tfds[split][1])
  assert not np.array_equal(dataset['train'][1], expected['train'][1])  # TFDS reorders.
  # The decoded cache was written, named after the IDX files, and serves the next load.
  path = cache.cache_path(data_config, idx.files_identity(data_config.local_dir))
  assert os.listdir(tmp_path / 'cache') == [os.path.basename(path)]
  cached = pipeline.load_dataset(data_config)
  np.testing.assert_array_equal(cached['train'][0], dataset['train'][0])
  assert (cached.num_classes, cached.class_names) == (10, dataset.class_names)
  # Other IDX files (here: the same path, rewritten) never reuse that cache.
  _write_idx_dir(tmp_path / 'idx', synthetic_dataset(num_train=40, num_test=12, seed=4))
  os.utime(tmp_path / 'idx' / 't10k-labels-idx1-ubyte', ns=(1, 1))
  assert cache.cache_path(data_config, idx.files_identity(data_config.local_dir)) != path


def test_training_from_idx_files_skips_tensorflow_and_the_tfds_round_trip(config, tmp_path):
  _write_idx_dir(tmp_path / 'idx', synthetic_dataset(num_train=40, num_test=12))
  code = ('import sys, ml_collections; from mlp_mnist.data import pipeline as ip; '
          'd = ip.load_dataset(ml_collections.ConfigDict(dict(name="mnist", version="3.0.1", '
          f'data_dir="{tmp_path / "tfds"}", local_dir="{tmp_path / "idx"}", '
          f'cache_dir="{tmp_path / "cache"}", use_cache=True, download=False, npz_path=""))); '
          'assert d["train"][0].shape == (40, 28, 28); '
          'assert "tensorflow" not in sys.modules, "TensorFlow was imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)
  assert not (tmp_path / 'tfds').exists() and len(os.listdir(tmp_path / 'cache')) == 1


def test_real_mnist_from_idx_files_equals_tfds(config, tmp_path):
  """Real MNIST read directly from its IDX files equals what TFDS writes and reads back."""
  idx_dir = os.environ.get('MLP_MNIST_IDX_DIR')
  if not idx_dir:
    pytest.skip('set MLP_MNIST_IDX_DIR to a directory with the four MNIST IDX files')
  data_config = _data_config(config, tmp_path, local_dir=idx_dir)
  data.prepare_from_idx(idx_dir, data_config.data_dir)
  tfds = tfds_source.import_tfds()
  from_tfds = tfds_source.read_dataset(tfds, tfds_source.builder(tfds, data_config), data_config)
  direct = idx.read_as_tfds_mnist(idx_dir)
  for split in ('train', 'test'):
    for got, want in zip(direct[split], from_tfds[split]):
      assert got.dtype == want.dtype
      np.testing.assert_array_equal(got, want)


def test_cached_dataset_loads_without_importing_tensorflow(config, tmp_path):
  expected = synthetic_dataset(num_train=20, num_test=10)
  os.makedirs(tmp_path / 'cache')
  np.savez(tmp_path / 'cache' / 'mnist-3.0.1.npz',
           **{f'{s}_{k}': a
              for s, (im, lb) in (('train', expected.train), ('test', expected.test))
              for k, a in (('images', im), ('labels', lb))})
  code = ('import sys, ml_collections; from mlp_mnist.data import pipeline as ip; '
          f'd = ip.load_dataset(ml_collections.ConfigDict(dict(name="mnist", version="3.0.1", '
          f'data_dir="", local_dir="", cache_dir="{tmp_path / "cache"}", use_cache=True, '
          'download=False, npz_path=""))); assert d["train"][0].shape == (20, 28, 28); '
          'assert (d.image_shape, d.num_classes) == ((28, 28), 10); '
          'assert "tensorflow" not in sys.modules, "TensorFlow was imported"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=60)


@pytest.mark.parametrize('corruption,message', [
    ('missing', 'has neither t10k-labels-idx1-ubyte nor t10k-labels-idx1-ubyte.gz'),
    ('truncated', 'is truncated or corrupt'),
    ('magic', 'has IDX magic number 2049, expected 2051'),
    ('count', 'holds 12 images but'),
    ('not_gzip', 'cannot be read'),
    ('damaged_gzip', 'the file is damaged: replace it with an intact copy'),
    ('truncated_gzip', 'the file is damaged: replace it with an intact copy'),
])
def test_bad_idx_files_fail_clearly_before_tfds_writes(config, tmp_path, corruption, message):
  idx = tmp_path / 'idx'
  _write_idx_dir(idx, synthetic_dataset(num_train=40, num_test=12), compress=('train',))
  if corruption == 'missing':
    os.remove(idx / 't10k-labels-idx1-ubyte')
  elif corruption == 'truncated':
    content = (idx / 't10k-images-idx3-ubyte').read_bytes()
    (idx / 't10k-images-idx3-ubyte').write_bytes(content[:-100])
  elif corruption == 'magic':
    os.replace(idx / 't10k-labels-idx1-ubyte', idx / 't10k-images-idx3-ubyte')
    _write_idx_dir(tmp_path / 'other', synthetic_dataset(num_train=40, num_test=12),
                   compress=())
    os.replace(tmp_path / 'other' / 't10k-labels-idx1-ubyte', idx / 't10k-labels-idx1-ubyte')
  elif corruption == 'count':
    labels = synthetic_dataset(num_train=40, num_test=11)['test'][1]
    content = (2049).to_bytes(4, 'big') + (11).to_bytes(4, 'big') + labels.astype('u1').tobytes()
    (idx / 't10k-labels-idx1-ubyte').write_bytes(content)
  elif corruption == 'not_gzip':
    (idx / 'train-labels-idx1-ubyte.gz').write_bytes(b'not a gzip file at all')
  elif corruption == 'damaged_gzip':  # A valid gzip header, then damaged compressed data.
    content = bytearray((idx / 'train-images-idx3-ubyte.gz').read_bytes())
    content[len(content) // 2:len(content) // 2 + 40] = bytes(40)
    (idx / 'train-images-idx3-ubyte.gz').write_bytes(bytes(content))
  elif corruption == 'truncated_gzip':
    content = (idx / 'train-images-idx3-ubyte.gz').read_bytes()
    (idx / 'train-images-idx3-ubyte.gz').write_bytes(content[:len(content) // 2])
  data_config = _data_config(config, tmp_path, local_dir=str(idx))
  with pytest.raises(data.DataError) as e:
    pipeline.load_dataset(data_config)
  assert message in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'tfds').exists()


def test_no_network_and_no_local_files_fails_within_seconds(config, tmp_path, monkeypatch):
  def unreachable(*args, **kwargs):
    raise socket.gaierror(-2, 'Name or service not known')

  monkeypatch.setattr(tfds_source.socket, 'create_connection', unreachable)
  data_config = _data_config(config, tmp_path)
  tfds_source.import_tfds()  # Its import time is not what this test measures.
  start = time.time()
  with pytest.raises(data.DataError) as e:
    pipeline.load_dataset(data_config)
  assert time.time() - start < 10
  assert 'download host storage.googleapis.com is unreachable' in str(e.value)
  assert '--config.data.local_dir=DIR' in str(e.value)


def test_downloads_off_and_nothing_prepared_says_how_to_provide_data(config, tmp_path):
  with pytest.raises(data.DataError, match='downloads are off;.*local_dir'):
    pipeline.load_dataset(_data_config(config, tmp_path, download=False))


def test_tfds_pipeline_under_mock_data(config, tmp_path, monkeypatch):
  tfds = tfds_source.import_tfds()
  monkeypatch.setattr(tfds_source, 'check_reachable', lambda *args: None)
  with tfds.testing.mock_data(num_examples=24):
    dataset = pipeline.load_dataset(_data_config(config, tmp_path, use_cache=False))
  for split in ('train', 'test'):
    images, labels = dataset[split]
    assert images.shape == (24, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (24,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
  assert not (tmp_path / 'cache').exists()
