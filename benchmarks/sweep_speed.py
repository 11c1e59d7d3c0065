"""A sweep's trials trained vectorized versus one at a time, measured two ways.

`compare`, in one process: `vectorized.train_trials` against a loop of `train_and_evaluate`. Both
start from the same loaded dataset and include everything a run does (creating the states,
compiling, every epoch and every evaluation); neither writes files or shows a progress bar. The
single runs use the devices `scripts/train.py` would: all accelerators, or the CPU as one device (a
CPU split into several devices trains one model slower: the sums cross devices).

`compare_commands`, as a user runs them: `scripts/sweep.py` once against `scripts/train.py` once
per trial (its `--config.*` overrides on the command line), each a fresh process timed from start to
exit, writing what it always writes. The train.py runs share JAX's persistent compilation cache, as
a shell loop over them would.
"""

import io
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax

from mlp_mnist import data
from mlp_mnist import steps
from mlp_mnist import train
from mlp_mnist.devices import parallel
from mlp_mnist.sweeps import sweep_files
from mlp_mnist.sweeps import vectorized


def compare(trials: list[sweep_files.Trial], dataset: data.Dataset, devices=None,
            log: Callable[[str], Any] = print) -> dict[str, Any]:
  """Times both ways of training `trials` in this process; logs a report."""
  devices = parallel.local_devices(devices)
  configs = [t.config for t in trials]
  epochs = '/'.join(sorted({str(c.num_epochs) for c in configs}, key=int))
  groups = vectorized.group_by_program(configs)
  num_train, num_test = len(dataset['train'][1]), len(dataset['test'][1])
  log(f'{len(trials)} trials ({len(groups)} program group(s)), {epochs} epoch(s), '
      f'{num_train} training and {num_test} test examples; {len(devices)} '
      f'{devices[0].platform} device(s), {os.cpu_count()} CPU cores; load average before: '
      f'{_load()}.')
  # JAX's first eager operations in a process cost seconds; neither side should pay for them.
  jax.block_until_ready(steps.create_train_state(
      configs[0], jax.random.PRNGKey(0), 1, dataset.image_shape, dataset.num_classes).params)

  start = time.time()
  swept, vectorized_compile = [None] * len(configs), 0.0
  for group in groups:
    result = vectorized.train_trials([configs[i] for i in group], dataset, devices)
    vectorized_compile += result['timings']['compile_sec']
    for i, history in zip(group, result['history']):
      swept[i] = history
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
                     for v, a in zip(swept, alone) if v and a)
  speedup = alone_sec / vectorized_sec
  log(f'speed-up:      {speedup:8.1f}x; largest difference in final test accuracy between the '
      f'two: {accuracy_gap:.4f}; load average after: {_load()}.')
  return {'vectorized_sec': vectorized_sec, 'one_at_a_time_sec': alone_sec, 'speedup': speedup,
          'vectorized_compile_sec': vectorized_compile, 'one_at_a_time_compile_sec': alone_compile,
          'accuracy_gap': accuracy_gap, 'num_trials': len(trials)}


def compare_commands(config_args: list[str], trials: list[sweep_files.Trial], cpu_devices: int = 0,
                     log: Callable[[str], Any] = print,
                     environ: dict[str, str] | None = None) -> dict[str, Any]:
  """Times `scripts/sweep.py` over `trials` against `scripts/train.py` once per trial; logs it.

  `config_args` (the user's `--config=FILE` and `--config.*` flags, `--jax_cache_dir`) go to
  every command; `environ` is the commands' environment (default: this process's).
  """
  scripts = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts')
  with tempfile.TemporaryDirectory() as root:
    sweep_file = os.path.join(root, 'trials.py')
    with open(sweep_file, 'w') as f:
      f.write(sweep_file_text(trials))
    sweep_dir = os.path.join(root, 'sweep')
    sweep_sec = _run([sys.executable, os.path.join(scripts, 'sweep.py'), *config_args,
                      f'--sweep={sweep_file}', f'--workdir={sweep_dir}',
                      f'--cpu_devices={cpu_devices}'], environ)
    with open(os.path.join(sweep_dir, 'results.jsonl')) as f:  # Best first: matched by name.
      by_name = {row['trial']: row['test_accuracy'] for row in map(json.loads, f)}
    swept = [by_name[n] for n in sweep_files.trial_names([t.overrides for t in trials])]
    log(f'scripts/sweep.py, once:              {sweep_sec:8.1f}s')
    alone, alone_sec = [], 0.0
    for index, trial in enumerate(trials):
      workdir = os.path.join(root, f'trial_{index}')
      alone_sec += _run([sys.executable, os.path.join(scripts, 'train.py'), *config_args,
                         *override_flags(trial.overrides), f'--workdir={workdir}'], environ)
      with open(os.path.join(workdir, 'summary.json')) as f:
        alone.append(json.load(f)['test_accuracy'])
  speedup = alone_sec / sweep_sec
  gap = max(abs(a - b) for a, b in zip(swept, alone))
  log(f'scripts/train.py, once per trial:    {alone_sec:8.1f}s')
  log(f'speed-up:                            {speedup:8.1f}x; largest difference in final test '
      f'accuracy between the two: {gap:.4f}.')
  return {'sweep_command_sec': sweep_sec, 'train_commands_sec': alone_sec,
          'commands_speedup': speedup, 'commands_accuracy_gap': gap}


def sweep_file_text(trials: list[sweep_files.Trial]) -> str:
  """A sweep file that declares exactly `trials`, in order."""
  parts = ', '.join(
      'hyper.product([' + ', '.join(f'hyper.fixed({k!r}, {v!r})' for k, v in t.overrides.items())
      + '])' for t in trials)
  return f'def get_sweep(hyper):\n  return hyper.chain([{parts}])\n'


def override_flags(overrides: dict[str, Any]) -> list[str]:
  """`--config.KEY=VALUE` flags that set `overrides` (strings bare, other values as literals)."""
  return [f'--config.{k}={v if isinstance(v, str) else repr(v)}' for k, v in overrides.items()]


def _run(command: list[str], environ: dict[str, str] | None = None) -> float:
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True, check=False, env=environ)
  if result.returncode:
    tail = (result.stderr.strip().splitlines() or ['no output'])[-1]
    raise RuntimeError(f'{" ".join(command[1:3])} failed (exit {result.returncode}): {tail}')
  return time.perf_counter() - start


def _load() -> str:
  try:
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())
  except OSError:
    return 'unknown'
