"""Your own arrays (`config.data.npz_path`): the format, training on it, every bad file's error."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlp_mnist import data
from mlp_mnist import train
from mlp_mnist.data import npz

from conftest import REPO


def _arrays(num_train=40, num_test=12, shape=(8, 8, 3), num_classes=5, seed=0):
  """Learnable colour arrays: class c brightens channel c % 3 in its own rows."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 40, (n,) + shape).astype(np.uint8)
    for i, c in enumerate(labels):
      if len(shape) == 3:
        images[i, c % shape[0], :, c % shape[2]] = 250
      else:
        images[i, c % shape[0]] = 250
    return images, labels

  (x_train, y_train), (x_test, y_test) = split(num_train), split(num_test)
  return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_npz_route_reads_shape_classes_and_trains(config, tmp_path):
  arrays = _arrays()
  np.savez(tmp_path / 'mine.npz', **arrays, class_names=np.array(list('abcde')))
  config = _npz_config(config, tmp_path / 'mine.npz')
  dataset = data.load_dataset(config.data)
  assert (dataset.image_shape, dataset.num_classes) == ((8, 8, 3), 5)
  assert dataset.class_names == tuple('abcde')
  np.testing.assert_array_equal(dataset.train[0], arrays['x_train'])
  assert dataset.train[1].dtype == np.int32

  config.num_epochs = 3
  config.batch_size = 8
  config.eval_batch_size = 8
  result = train.train_and_evaluate(config, str(tmp_path / 'run'), devices=jax.devices()[:2],
                                    log=lambda _: None)
  assert result['state'].params['Dense_0']['kernel'].shape == (8 * 8 * 3, 128)
  assert result['state'].params['Dense_1']['kernel'].shape == (128, 5)
  assert result['history'][-1]['train_accuracy'] > 0.5
  with open(tmp_path / 'run' / 'dataset.json') as f:
    info = json.load(f)
  assert info == {'name': 'mine.npz', 'image_shape': [8, 8, 3], 'num_classes': 5,
                  'class_names': list('abcde'), 'num_train': 40, 'num_validation': 0,
                  'num_test': 12, 'source': 'config'}


def test_float_images_in_unit_range_and_single_channel(tmp_path):
  arrays = _arrays(shape=(6, 7, 1))
  uint8_images = arrays['x_train']
  arrays['x_train'] = uint8_images.astype(np.float32) / 255.0
  np.savez(tmp_path / 'f.npz', **arrays, num_classes=np.int64(7))
  dataset = npz.load(str(tmp_path / 'f.npz'))
  assert dataset.train[0].dtype == np.uint8 and dataset.image_shape == (6, 7)
  np.testing.assert_array_equal(dataset.train[0], uint8_images[..., 0])
  assert dataset.num_classes == 7  # num_classes, not the largest label, sets the class count.


def _npz_config(config, path):
  config.data.npz_path = str(path)
  config.data.cache_dir = os.path.join(os.path.dirname(path), 'unused_cache')
  return config


def _bad(kind):
  """(arrays to save, or raw bytes; expected message) for each kind of bad file."""
  a = _arrays(num_train=10, num_test=5, shape=(8, 8))
  cases = {
      'missing_array': ({k: v for k, v in a.items() if k != 'y_test'}, 'has no array y_test'),
      'lengths': ({**a, 'y_train': a['y_train'][:9]},
                  'y_train holds 9 labels but x_train holds 10 images'),
      'not_images': ({**a, 'x_train': a['x_train'].reshape(10, 64)},
                     'x_train has shape (10, 64); images must be [N, H, W] or [N, H, W, C]'),
      'shapes_differ': ({**a, 'x_test': a['x_test'][:, :, :7]},
                        'x_train holds images of shape (8, 8) but x_test (8, 7)'),
      'negative_label': ({**a, 'y_test': a['y_test'] - 5}, 'y_test has label -'),
      'float_labels': ({**a, 'y_train': a['y_train'].astype(np.float32)},
                       'y_train has dtype float32; labels must be integers'),
      'one_hot_labels': ({**a, 'y_train': np.eye(5)[a['y_train']].astype(np.int64)},
                         'y_train has shape (10, 5); labels must be one integer per image'),
      'label_range': ({**a, 'num_classes': np.int64(2), 'y_train': np.maximum(a['y_train'], 2)},
                      'y_train has label'),
      # Checked before any cast: as int32 it would silently become class 3.
      'label_overflow': ({**a, 'y_train': a['y_train'].astype(np.int64) + (2**32 + 3) * (
          a['y_train'] == a['y_train'].max())}, 'y_train has label 4294967'),
      'empty_split': ({**a, 'x_test': a['x_test'][:0], 'y_test': a['y_test'][:0]},
                      'x_test is empty'),
      'float_range': ({**a, 'x_train': a['x_train'].astype(np.float32)},
                      'float images must be in [0, 1]'),
      'image_dtype': ({**a, 'x_train': a['x_train'].astype(np.int16)},
                      'x_train has dtype int16; images must be uint8'),
      'objects': ({**a, 'y_test': np.array([None] * 5, dtype=object)},
                  'holds Python objects'),
      'not_npz': (b'x_train,y_train\n1,2\n', 'is not an .npz file'),
      'npy': ('npy', 'is a single .npy array, not an .npz archive'),
      'truncated': ('truncated', 'is not a readable .npz file'),
      'missing_file': (None, 'does not exist'),
  }
  return cases[kind]


BAD_KINDS = ('missing_array', 'lengths', 'not_images', 'shapes_differ', 'negative_label',
             'float_labels', 'one_hot_labels', 'label_range', 'label_overflow', 'empty_split', 'float_range',
             'image_dtype', 'objects', 'not_npz', 'npy', 'truncated', 'missing_file')


def _write_bad(tmp_path, kind) -> tuple[str, str]:
  content, message = _bad(kind)
  path = str(tmp_path / f'{kind}.npz')
  if isinstance(content, dict):
    np.savez(path, **content)
  elif isinstance(content, bytes):
    with open(path, 'wb') as f:
      f.write(content)
  elif content == 'npy':
    np.save(path, _arrays()['x_train'])
    os.replace(path + '.npy', path)
  elif content == 'truncated':
    np.savez(path, **_arrays())
    with open(path, 'rb') as f:
      head = f.read(os.path.getsize(path) // 2)
    with open(path, 'wb') as f:
      f.write(head)
  return path, message


@pytest.mark.parametrize('kind', BAD_KINDS)
def test_bad_npz_files_fail_in_one_line_naming_file_and_array(tmp_path, kind):
  path, message = _write_bad(tmp_path, kind)
  with pytest.raises(data.DataError) as e:
    npz.load(path)
  text = str(e.value)
  assert message in text and path in text and '\n' not in text, text
  array = next((k for k in npz.REQUIRED if k in message), None)
  if array:
    assert array in text


# Runs scripts/train.py once per bad file, as a user would, in forked children of one interpreter
# that has already imported the libraries (a fresh interpreter per file would cost seconds each).
_DRIVER = r'''
import json, os, runpy, sys, traceback
sys.path.insert(0, os.getcwd())
import mlp_mnist.train, mlp_mnist.cli  # noqa: F401  (the expensive imports, once)
results = []
for path, out in json.loads(sys.argv[1]):
  pid = os.fork()
  if pid == 0:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ['scripts/train.py', '--config=configs/default.py', '--jax_cache_dir=',
                f'--config.data.npz_path={path}', f'--workdir={out}.run']
    code = 0
    try:
      runpy.run_path('scripts/train.py', run_name='__main__')
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else 1
    except BaseException:
      traceback.print_exc()
      code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(results))
'''


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='the driver forks')
def test_bad_npz_files_exit_through_train_script_without_traceback(tmp_path):
  cases = [(*_write_bad(tmp_path, kind), str(tmp_path / f'{kind}.out')) for kind in BAD_KINDS]
  jobs = json.dumps([(path, out) for path, _, out in cases])
  result = subprocess.run([sys.executable, '-c', _DRIVER, jobs], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr
  codes = json.loads(result.stdout.splitlines()[-1])
  for (path, message, out), code in zip(cases, codes):
    with open(out) as f:
      output = f.read()
    lines = output.strip().splitlines()
    assert code == 2, (path, output)
    assert 'Traceback' not in output, output
    assert lines[-1].startswith(f'error: {path}') and message in lines[-1], output
