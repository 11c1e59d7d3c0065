r"""Times a sweep trained vectorized against the same trials trained one at a time.

    python scripts/benchmark_sweep.py --config configs/default.py \
        --config.data.local_dir=/path/to/mnist_idx [--sweep configs/sweeps/lr_seed.py] [--quick]

By default: the 32 trials of configs/sweeps/lr_seed.py (8 learning rates x 4 seeds) of the default
recipe, timed in one process (vectorized training against a loop of single runs) and then as
commands (`scripts/sweep.py` once against `scripts/train.py` once per trial; `--nocommands` skips
these). `--quick`: 4 trials, 1 epoch, at most 2,048 training and 1,000 test examples in the one
process (the commands train on the whole dataset); a sweep that holds out a number of examples
holds out a sixth of them instead, on both sides.
"""

import dataclasses
import os
import sys

# The benchmarks live beside the package, in the checkout, not in what is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

from mlp_mnist import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py).',
                                          lock_config=True)
_SWEEP = flags.DEFINE_string(
    'sweep', os.path.join(os.path.dirname(__file__), '..', 'configs', 'sweeps', 'lr_seed.py'),
    'Sweep file.')
_NUM_TRIALS = flags.DEFINE_integer('num_trials', 0, 'Only the first N trials (0: all).')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 0, 'Without accelerators: JAX devices to split the CPU into (0: one per core), '
    'as scripts/sweep.py does.')
_COMMANDS = flags.DEFINE_bool(
    'commands', True, 'Also time scripts/sweep.py against scripts/train.py once per trial.')
_JAX_CACHE_DIR = flags.DEFINE_string(
    'jax_cache_dir', cli.DEFAULT_COMPILATION_CACHE,
    "The commands' JAX compilation cache, as scripts/train.py's flag ('' turns it off).")
_QUICK = flags.DEFINE_bool('quick', False,
                           'A check, not a measurement: 4 trials, 1 epoch, few examples.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  from benchmarks import sweep_speed  # pylint: disable=g-import-not-at-top
  from benchmarks import training_speed  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import sweep_files  # pylint: disable=g-import-not-at-top
  cli.split_cpu_into_devices(_CPU_DEVICES.value)
  # With the commands, this process trains on a GPU without taking 75% of its memory up front.
  commands_environ = (training_speed.leave_gpu_memory_to_child_processes() if _COMMANDS.value
                      else None)
  config, num_trials = _CONFIG.value, _NUM_TRIALS.value
  with cli.exit_on_user_error():
    dataset = data.load_dataset(config.data)
    if _QUICK.value:
      config.num_epochs = 1
      num_trials = num_trials or 4
      dataset = dataclasses.replace(dataset, train=tuple(a[:2048] for a in dataset.train),
                                    test=tuple(a[:1000] for a in dataset.test))
    trials = sweep_files.sweep_trials(config, _SWEEP.value)[:num_trials or None]
    if _QUICK.value:
      for trial in trials:  # A count of held-out examples (10,000) need not fit in 2,048.
        if trial.config.data.validation_split >= 1:
          trial.config.data.validation_split = 1 / 6  # As 10,000 of MNIST's 60,000.
          trial.overrides['data.validation_split'] = 1 / 6  # The commands' trials too.
    sweep_speed.compare(trials, dataset)
    if _COMMANDS.value:
      sweep_speed.compare_commands(_config_args(config.num_epochs), trials, _CPU_DEVICES.value,
                                   environ=commands_environ)


def _config_args(num_epochs: int) -> list[str]:
  """The user's --config flags (and --quick's epochs) and the cache, for the commands to time."""
  from benchmarks import sweep_speed  # pylint: disable=g-import-not-at-top
  config_flag = flags.FLAGS['config']
  overrides = {**config_flags.get_override_values(config_flag), 'num_epochs': num_epochs}
  return [f'--config={config_flags.get_config_filename(config_flag)}',
          *sweep_speed.override_flags(overrides), f'--jax_cache_dir={_JAX_CACHE_DIR.value}']


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
