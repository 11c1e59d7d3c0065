r"""Compares runs: their config differences as a table and their learning curves in one picture.

    python scripts/compare.py runs/a runs/b [runs/lr_seed/trials/learning_rate=0.002,seed=1 ...] \
        [--output=compare.png]

Each argument is a single run's --workdir or a sweep trial folder. Prints the config keys whose
values differ between the runs and their final metrics; draws loss and accuracy per epoch of every
run (validation when all runs have it, else test, solid; training dashed) into --output.
"""

from absl import app
from absl import flags

from mlp_mnist import cli

_OUTPUT = flags.DEFINE_string('output', 'compare.png', 'Where to draw the overlaid curves (PNG).')


def main(argv):
  if len(argv) < 3:
    raise app.UsageError('Give two or more run folders after the flags.')
  from mlp_mnist.tools import compare  # pylint: disable=g-import-not-at-top
  with cli.exit_on_user_error():
    print(compare.compare(argv[1:], _OUTPUT.value))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
