r"""Trains and evaluates a model (config.model.name: the MLP, the CNN) on MNIST.

    python scripts/train.py --config configs/default.py --config.data.local_dir=/path/to/mnist_idx \
        [--config.optimizer.learning_rate=3e-4] [--workdir runs/x] [--restart]

Rerunning the same command with the same --workdir resumes from the latest checkpoint there.
Several hosts: run the same command on each, with --coordinator_address, --num_processes and
--process_id where JAX cannot detect them (docs/gpu.md, docs/tpu_vm.md).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from mlp_mnist import cli
from mlp_mnist.records import plot_worker

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output folder; default: a new folder under runs/ (the time and process id).')
_RESTART = flags.DEFINE_bool(
    'restart', False, 'Discard the run already in --workdir (checkpoints, metrics, events, plots) '
    'and start over, instead of resuming it.')
cli.define_jax_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  plot_worker.start()  # First: it forks, and imports matplotlib while JAX is imported here.
  if cli.set_up_jax() and not _WORKDIR.value:
    raise app.UsageError('a multi-process run needs --workdir, the same for every process.')
  workdir = _WORKDIR.value or cli.default_workdir()
  cli.run_training(_CONFIG.value, workdir, restart=_RESTART.value)
  cli.skip_collection_at_exit()


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
