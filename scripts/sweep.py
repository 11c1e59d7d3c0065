r"""Runs a hyperparameter sweep: every trial of a sweep file over a base config, many at once.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/lr_seed.py \
        --workdir runs/lr_seed [--config.data.local_dir=/path/to/mnist_idx]

Re-running the same command resumes (finished trials are skipped). On several machines, run it on
each with `--num_workers N --worker_index i`; in a multi-process JAX run (a TPU pod slice, or the
flags of docs/gpu.md) these default to the process count and index. `--report_only` rebuilds the
tables, plots and report (`report.md`, `report.html`) from the trial folders, also while the sweep
is partly finished.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from mlp_mnist import cli
from mlp_mnist.records import plot_worker

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py).',
                                          lock_config=True)
_SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file (configs/sweeps/*.py).')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Output folder; default: runs/<sweep file name>.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', None,
                                    'Machines sharing the sweep; default: jax.process_count().')
_WORKER_INDEX = flags.DEFINE_integer('worker_index', None,
                                     "This machine's index; default: jax.process_index().")
_MAX_TRIALS_PER_PROGRAM = flags.DEFINE_integer(
    'max_trials_per_program', 0,
    'Train at most this many trials at once (bounds device memory); 0: a whole group at once.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only rebuild tables, leaderboards, plots and report; train nothing.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 0, 'Without accelerators: JAX devices to split the CPU into, trials spread over '
    'them (each holds a copy of the dataset); 0: one per core.')
cli.define_jax_flags()
# The report lists the base config's differences from this one.
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                               'default.py')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  plot_worker.start()  # First: it forks, and imports matplotlib while JAX is imported here.
  import jax  # pylint: disable=g-import-not-at-top
  from mlp_mnist import config_files  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import bayesian  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import runner  # pylint: disable=g-import-not-at-top
  workdir = _WORKDIR.value or os.path.join(
      'runs', os.path.splitext(os.path.basename(_SWEEP.value))[0])
  cli.split_cpu_into_devices(_CPU_DEVICES.value)
  cli.set_up_jax()  # Several processes (TPU pod slice...): each runs its share of the trials.
  with cli.exit_on_user_error():
    rows = bayesian.run_search(  # A sweep, or a Bayesian search where the file declares one.
        _CONFIG.value, _SWEEP.value, workdir,
        num_workers=(jax.process_count() if _NUM_WORKERS.value is None else _NUM_WORKERS.value),
        worker_index=(jax.process_index() if _WORKER_INDEX.value is None
                      else _WORKER_INDEX.value),
        max_group_size=_MAX_TRIALS_PER_PROGRAM.value, report_only=_REPORT_ONLY.value,
        reference_config=config_files.load_module(_DEFAULT_CONFIG).get_config(),
        command=shlex.join(['python', *sys.argv]))
  cli.skip_collection_at_exit()
  failed = runner.failed_trials(rows)
  if failed and not _REPORT_ONLY.value:
    raise SystemExit(f'error: {len(failed)} trial(s) failed ({failed[0]}, ...; see the status '
                     'file in each trial folder); re-run the same command to retry them.')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep'])
  app.run(main, flags_parser=cli.parse_flags)
