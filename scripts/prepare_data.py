r"""Prepares the TFDS MNIST dataset offline, from the four standard IDX files in a local directory.

    python scripts/prepare_data.py --idx_dir /path/to/mnist_idx [--data_dir ~/tensorflow_datasets]

Afterwards `tfds.load('mnist', data_dir=..., download=False)` and `scripts/train.py` (with
`--config.data.data_dir` when not TFDS' default) read it without network access.
"""

from absl import app
from absl import flags

from mlp_mnist import cli
from mlp_mnist import data

_IDX_DIR = flags.DEFINE_string('idx_dir', None, 'Directory with the four MNIST IDX files.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, "TFDS data directory; default: TFDS' own.")
_NAME = flags.DEFINE_string('name', 'mnist', 'TFDS dataset in the MNIST IDX format.')
_VERSION = flags.DEFINE_string('version', '3.0.1', 'TFDS dataset version.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  with cli.exit_on_user_error():
    path = data.prepare_from_idx(_IDX_DIR.value, _DATA_DIR.value, _NAME.value,
                                           _VERSION.value)
  print(f'{_NAME.value}:{_VERSION.value} is prepared in {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['idx_dir'])
  app.run(main, flags_parser=cli.parse_flags)
