r"""Evaluates a checkpoint of a training run on its test set.

    python scripts/evaluate.py --workdir runs/x [--step N|best] [--json]

Reports test loss and accuracy (what training reported for that step), per-class accuracy, and
writes plots/confusion_matrix.png and plots/misclassified.png into the workdir.
"""

import json
import sys

from absl import app
from absl import flags

from mlp_mnist import cli
from mlp_mnist.records import plot_worker

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of a training run.')
_STEP = flags.DEFINE_string(
    'step', None, "Checkpoint step (optimizer steps), or 'best' (the best checkpoint by the "
    'monitored metric); default: the latest.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as one JSON object.')
_NPZ_PATH = flags.DEFINE_string(
    'npz_path', None, 'Evaluate on the test split of this .npz (README, Your own arrays) instead '
    "of the data the run's config names; needed for runs trained on arrays in memory.")
_NUM_MISTAKES = flags.DEFINE_integer('num_mistakes', 24, 'Mistakes shown in misclassified.png.',
                                     lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  plot_worker.start()  # First: it forks, and imports matplotlib while JAX is imported here.
  from mlp_mnist.tools import evaluation  # pylint: disable=g-import-not-at-top
  from mlp_mnist.data import npz  # pylint: disable=g-import-not-at-top
  with cli.exit_on_user_error():
    dataset = npz.load(_NPZ_PATH.value) if _NPZ_PATH.value else None
    report = evaluation.evaluate_run(_WORKDIR.value, cli.checkpoint_step(_STEP.value),
                                     dataset=dataset, num_mistakes=_NUM_MISTAKES.value)
  print(json.dumps(report) if _JSON.value else evaluation.format_report(report))
  for warning in report['warnings']:  # Plots that could not be written (a read-only workdir).
    print(warning, file=sys.stderr)


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir'])
  app.run(main, flags_parser=cli.parse_flags)
