"""A sweep's trials trained vectorized (`sweep_train`) versus one at a time (`train_and_evaluate`).

Both sides start from the same loaded dataset and include everything a run does: creating the
states, compiling, every epoch and every evaluation. Neither writes files or shows a progress bar.
The single runs use the devices `scripts/train.py` would: all accelerators, or the CPU as one
device (a CPU split into several devices trains one model slower: the sums cross devices).
"""

import io
import os
import time
from typing import Any, Callable

import jax
import ml_collections

from mlp_mnist import input_pipeline
from mlp_mnist import parallel
from mlp_mnist import sweep_spec
from mlp_mnist import sweep_train
from mlp_mnist import train


def compare(config: ml_collections.ConfigDict, sweep_path: str, dataset: input_pipeline.Dataset,
            devices=None, num_trials: int = 0,
            log: Callable[[str], Any] = print) -> dict[str, Any]:
  """Times both ways of training the sweep's first `num_trials` trials (0: all); logs a report."""
  devices = parallel.local_devices(devices)
  trials = sweep_spec.sweep_trials(config, sweep_path)[:num_trials or None]
  configs = [t.config for t in trials]
  groups = sweep_train.group_by_program(configs)
  num_train, num_test = len(dataset['train'][1]), len(dataset['test'][1])
  log(f'{len(trials)} trials ({len(groups)} program group(s)), {config.num_epochs} epoch(s), '
      f'{num_train} training and {num_test} test examples; {len(devices)} '
      f'{devices[0].platform} device(s), {os.cpu_count()} CPU cores; load average before: '
      f'{_load()}.')
  # JAX's first eager operations in a process cost seconds; neither side should pay for them.
  jax.block_until_ready(train.create_train_state(configs[0], jax.random.PRNGKey(0), 1).params)

  start = time.time()
  vectorized, vectorized_compile = [None] * len(configs), 0.0
  for group in groups:
    result = sweep_train.train_trials([configs[i] for i in group], dataset, devices)
    vectorized_compile += result['timings']['compile_sec']
    for i, history in zip(group, result['history']):
      vectorized[i] = history
  vectorized_sec = time.time() - start
  log(f'vectorized:    {vectorized_sec:8.1f}s (compiling {vectorized_compile:.1f}s)')

  single_run_devices = devices[:1] if devices[0].platform == 'cpu' else devices
  start = time.time()
  alone, alone_compile = [], 0.0
  for trial_config in configs:
    result = train.train_and_evaluate(trial_config, None, single_run_devices, dataset,
                                      log=lambda line: None, stream=io.StringIO())
    alone_compile += result['timings']['compile_sec']
    alone.append(result['history'])
  alone_sec = time.time() - start
  log(f'one at a time: {alone_sec:8.1f}s (compiling {alone_compile:.1f}s; '
      f'{len(single_run_devices)} device(s) per run)')

  accuracy_gap = max(abs(v[-1]['test_accuracy'] - a[-1]['test_accuracy'])
                     for v, a in zip(vectorized, alone) if v and a)
  speedup = alone_sec / vectorized_sec
  log(f'speed-up:      {speedup:8.1f}x; largest difference in final test accuracy between the '
      f'two: {accuracy_gap:.4f}; load average after: {_load()}.')
  return {'vectorized_sec': vectorized_sec, 'one_at_a_time_sec': alone_sec, 'speedup': speedup,
          'vectorized_compile_sec': vectorized_compile, 'one_at_a_time_compile_sec': alone_compile,
          'accuracy_gap': accuracy_gap, 'num_trials': len(trials)}


def _load() -> str:
  try:
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())
  except OSError:
    return 'unknown'
