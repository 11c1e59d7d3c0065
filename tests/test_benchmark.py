import json
import os
import subprocess
import sys

import numpy as np

from mlp_mnist import benchmark

from conftest import REPO, synthetic_dataset


def test_training_flops_per_example_of_the_seed_model():
  # Forward and weight-gradient matmuls of both layers, input gradient of the second only.
  assert benchmark.training_flops_per_example((128,)) == 2 * 784 * 128 * 2 + 2 * 128 * 10 * 3
  assert benchmark.training_flops_per_example(()) == 2 * 784 * 10 * 2


def test_ratios_and_roofline_row():
  results = [
      {'contender': 'mlp_mnist', 'batch_size': 32, 'train_sec': 2.0, 'process_sec': 5.0,
       'num_train': 60000, 'test_accuracy': 0.975},
      {'contender': 'keras', 'batch_size': 32, 'train_sec': 30.0, 'process_sec': 40.0,
       'num_train': 60000, 'test_accuracy': 0.973},
  ]
  rows = benchmark.with_ratios(results, gflops=100.0, batch_size=32, epochs=5)
  ours, keras, roofline = rows
  assert ours['examples_per_sec'] == 150_000 and keras['examples_per_sec'] == 10_000
  assert keras['train_sec_vs_ours'] == 15 and keras['process_sec_vs_ours'] == 8
  np.testing.assert_allclose(keras['examples_per_sec_vs_ours'], 1 / 15)
  flops = benchmark.training_flops_per_example((128,)) * 60000 * 5
  np.testing.assert_allclose(roofline['train_sec'], flops / 100e9)
  table = benchmark.markdown_table(rows)
  assert '| 32 | Keras tutorial program | 30.00 | 15.00 | 10,000 | 0.067 | 97.30% | in fit |' in table
  ours['later_examples_per_sec'] = 200_000
  roofline_rate = 60000 * 5 * 100e9 / flops
  shares = benchmark.roofline_shares(rows).splitlines()[2]
  assert shares == (f'| 32 | 150,000 | 200,000 | {roofline_rate:,.0f} | '
                    f'{150_000 / roofline_rate:.0%} | {200_000 / roofline_rate:.0%} | - | - | - |')


def test_quick_benchmark_runs_every_contender(tmp_path):
  cache = tmp_path / 'cache'
  os.makedirs(cache)
  dataset = synthetic_dataset(num_train=60000 // 50, num_test=200)
  np.savez(cache / 'mnist-3.0.1.npz', **{f'{s}_{k}': a for s, (im, lb) in dataset.items()
                                         for k, a in (('images', im), ('labels', lb))})
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
