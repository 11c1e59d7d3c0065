import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import cnn_step
from benchmarks import roofline
from benchmarks import training_speed
from mlp_mnist import models

from conftest import REPO, synthetic_dataset, write_dataset_cache


def test_training_flops_per_example_of_the_seed_model():
  # Forward and weight-gradient matmuls of both layers, input gradient of the second only.
  assert roofline.training_flops_per_example((128,)) == 2 * 784 * 128 * 2 + 2 * 128 * 10 * 3
  assert roofline.training_flops_per_example(()) == 2 * 784 * 10 * 2


def test_ratios_and_roofline_row():
  results = [
      {'contender': 'mlp_mnist', 'batch_size': 32, 'train_sec': 2.0, 'process_sec': 5.0,
       'num_train': 60000, 'test_accuracy': 0.975},
      {'contender': 'keras', 'batch_size': 32, 'train_sec': 30.0, 'process_sec': 40.0,
       'num_train': 60000, 'test_accuracy': 0.973},
  ]
  rows = training_speed.with_ratios(results, gflops=100.0, batch_size=32, epochs=5)
  ours, keras, peak_row = rows
  assert ours['examples_per_sec'] == 150_000 and keras['examples_per_sec'] == 10_000
  assert keras['train_sec_vs_ours'] == 15 and keras['process_sec_vs_ours'] == 8
  np.testing.assert_allclose(keras['examples_per_sec_vs_ours'], 1 / 15)
  flops = roofline.training_flops_per_example((128,)) * 60000 * 5
  np.testing.assert_allclose(peak_row['train_sec'], flops / 100e9)
  table = training_speed.markdown_table(rows)
  assert '| 32 | Keras tutorial program | 30.00 | 15.00 | 10,000 | 0.067 | 97.30% | in fit |' in table
  ours['later_examples_per_sec'] = 200_000
  roofline_rate = 60000 * 5 * 100e9 / flops
  shares = training_speed.roofline_shares(rows).splitlines()[2]
  assert shares == (f'| 32 | 150,000 | 200,000 | {roofline_rate:,.0f} | '
                    f'{150_000 / roofline_rate:.0%} | {200_000 / roofline_rate:.0%} | - | - | - |')


def _synthetic_cache(tmp_path, num_train=60000 // 50):
  cache = tmp_path / 'cache'
  write_dataset_cache(cache, synthetic_dataset(num_train=num_train, num_test=200))
  return cache


def test_quick_benchmark_runs_every_contender(tmp_path):
  cache = _synthetic_cache(tmp_path)
  out = tmp_path / 'bench'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'benchmark.py'), '--quick',
       f'--cache_dir={cache}', f'--jax_cache_dir={tmp_path / "jax"}', f'--out={out}'],
      capture_output=True, text=True, timeout=600, cwd=tmp_path,
      env={**os.environ, 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  with open(f'{out}.json') as f:
    rows = json.load(f)['rows']
  assert [r['contender'] for r in rows] == ['mlp_mnist', 'keras', 'keras_silent', 'naive_jax',
                                            'roofline', 'roofline_shapes']
  for row in rows:
    assert 'error' not in row, row
    assert row['train_sec'] > 0 and row['examples_per_sec'] > 0
  assert all(0 <= r['test_accuracy'] <= 1 for r in rows[:4])
  assert rows[0]['num_train'] == 1200 and rows[3]['num_train'] == 1024  # Naive drops the rest.
  assert (tmp_path / 'bench.md').read_text().count('\n') == 12


def test_keras_program_runs_on_the_jax_backend_without_tensorflow(tmp_path):
  # Where TensorFlow cannot be installed (a GPU machine with JAX only), Keras runs on JAX. The
  # child process cannot import TensorFlow, as there.
  cache = _synthetic_cache(tmp_path, num_train=2048)
  code = ("import runpy, sys; sys.modules['tensorflow'] = None; "
          "runpy.run_module('benchmarks.training_speed', run_name='__main__')")
  result = subprocess.run(
      [sys.executable, '-c', code, '--contender=keras_silent', '--keras_backend=jax',
       '--batch_size=256', '--epochs=1', f'--cache_dir={cache}'],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
      env={**os.environ, 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert record['keras_backend'] == 'jax' and record['framework'].endswith('on jax')
  assert record['num_train'] == 2048 and record['train_sec'] > 0
  assert 0 <= record['test_accuracy'] <= 1
  row = {'contender': 'keras_silent', 'batch_size': 256, 'train_sec': 1.0, 'num_train': 2048,
         **{k: record[k] for k in ('keras_backend', 'test_accuracy')}}
  table = training_speed.markdown_table(training_speed.with_ratios([row], 100.0, 256, 1))
  assert '| 256 | Keras, fit(verbose=0) (Keras on jax) | 1.00 |' in table


def test_contender_processes_keep_the_callers_python_path():
  env = training_speed._with_repo_on_path({'PYTHONPATH': f'/opt/site{os.pathsep}/x', 'HOME': '/h'})
  assert env == {'PYTHONPATH': os.pathsep.join([REPO, '/opt/site', '/x']), 'HOME': '/h'}
  assert training_speed._with_repo_on_path({})['PYTHONPATH'] == REPO


def test_cnn_flops_count_each_layers_matmuls():
  # 3x3 SAME convolutions: forward and kernel gradient; the input's gradient but for the pixels'.
  conv1 = 2 * 28 * 28 * 9 * 1 * 16 * 2
  conv2 = 2 * 14 * 14 * 9 * 16 * 32 * 3
  dense = 2 * 3 * (7 * 7 * 32 * 128 + 128 * 10)
  assert roofline.cnn_training_flops_per_example() == conv1 + conv2 + dense
  rows = training_speed.with_ratios(
      [{'contender': 'mlp_mnist', 'batch_size': 128, 'train_sec': 10.0, 'num_train': 60000}],
      gflops=100.0, batch_size=128, epochs=5, model='cnn')
  np.testing.assert_allclose(rows[1]['train_sec'], (conv1 + conv2 + dense) * 300000 / 100e9)
  result = {'matmul_gflops': 100.0, 'layer_gflops': {128: {'conv 28x28x1 -> 16': 50.0}},
            'rows': [{'contender': 'pytorch', 'batch_size': 128,
                      'layer_gflops': {'conv 28x28x1 -> 16': 20.0}}]}
  assert training_speed.layer_table(result).splitlines()[2] == (
      '| 128 | conv 28x28x1 -> 16 | 50.0 | 50% | 20.0 | 20% |')


def test_quick_cnn_benchmark_runs_ours_and_keras(tmp_path):
  cache = _synthetic_cache(tmp_path)
  out = tmp_path / 'bench'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'scripts', 'benchmark.py'), '--quick', '--model=cnn',
       '--contenders=mlp_mnist,keras', f'--cache_dir={cache}',
       f'--jax_cache_dir={tmp_path / "jax"}', f'--out={out}'],
      capture_output=True, text=True, timeout=600, cwd=tmp_path,
      env={**os.environ, 'PYTHONPATH': REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  with open(f'{out}.json') as f:
    written = json.load(f)
  rows = written['rows']
  assert [r['contender'] for r in rows] == ['mlp_mnist', 'keras', 'roofline']
  assert all('error' not in r and r['train_sec'] > 0 and r['load'] >= 0 for r in rows[:2])
  assert written['model'] == 'cnn' and set(written['layer_gflops']['1024']) == set(
      roofline.CNN_CONVOLUTIONS)
  assert '| 1024 | conv 14x14x16 -> 32 |' in (tmp_path / 'bench.md').read_text()


def test_pytorch_cnn_contender(tmp_path):
  pytest.importorskip('torch')
  cache = _synthetic_cache(tmp_path, num_train=512)
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.training_speed', '--contender=pytorch', '--model=cnn',
       '--batch_size=128', '--epochs=1', f'--cache_dir={cache}'],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
      env=training_speed._with_repo_on_path(os.environ))
  assert result.returncode == 0, result.stderr[-2000:]
  record = json.loads(result.stdout.strip().splitlines()[-1])
  assert record['num_train'] == 512 and record['train_sec'] > 0
  assert 0 <= record['test_accuracy'] <= 1
  assert set(record['layer_gflops']) == set(roofline.CNN_CONVOLUTIONS)


def test_cnn_step_benchmark_times_the_scanned_epoch():
  config = cnn_step.cnn_config((4,))
  config.model.cnn.dense_width = 8
  best, median = cnn_step.time_steps(config, steps_per_call=2, calls=2)
  assert 0 < best <= median
  with cnn_step.blocks_as_three_layers():
    layered = str(cnn_step.scanned_epoch(config, 2)[0].as_text())
  assert 'convolution' in layered  # The first block as three layers; fused, none is left.
  assert 'convolution' not in str(cnn_step.scanned_epoch(config, 2)[0].as_text())


def test_cnn_step_flax_layers_variant_is_the_same_network():
  """The GPU check's comparison is like with like: the CNN built with flax.linen's `Conv` and
  `max_pool` gives ConvPool's logits from the same parameters."""
  model = models.create_model(cnn_step.cnn_config((4, 8)).model, num_classes=10)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 28, 28))
  params = model.init(jax.random.PRNGKey(0), images)['params']
  with cnn_step.blocks_as_flax_layers():
    flax_params = model.init(jax.random.PRNGKey(0), images)['params']
    assert set(flax_params['Conv_1']) == {'Conv_0'}  # Built of flax.linen's layers.
    nested = {name: {'Conv_0': value} if name.startswith('Conv_') else value
              for name, value in params.items()}
    flax_logits = model.apply({'params': nested}, images)
  np.testing.assert_allclose(flax_logits, model.apply({'params': params}, images),
                             rtol=1e-5, atol=1e-5)


def test_benchmark_process_leaves_gpu_memory_to_its_contenders(monkeypatch):
  """The benchmark's own process takes GPU memory as it needs it; its contenders' processes get
  the environment it was given, so each takes JAX's default share, as a user's run does."""
  monkeypatch.delenv(training_speed.PREALLOCATE, raising=False)
  environ = training_speed.leave_gpu_memory_to_child_processes()
  assert os.environ[training_speed.PREALLOCATE] == 'false'
  assert training_speed.PREALLOCATE not in environ and REPO in environ['PYTHONPATH']
  monkeypatch.setenv(training_speed.PREALLOCATE, 'true')  # The user's choice is kept for both.
  assert training_speed.leave_gpu_memory_to_child_processes()[training_speed.PREALLOCATE] == 'true'
  assert os.environ[training_speed.PREALLOCATE] == 'true'
