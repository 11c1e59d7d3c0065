r"""Benchmarks this codebase against the Keras tutorial program, a naive JAX loop and the roofline.

    python scripts/benchmark.py --local_dir /path/to/mnist_idx [--batch_sizes 32,128,1024] \
        [--epochs 5] [--out docs/benchmark]      # writes docs/benchmark.json and .md
    python scripts/benchmark.py --quick          # smoke run: 1 epoch, batch 1024
    python scripts/benchmark.py ... --keras_backend=jax   # Keras on JAX, where TensorFlow is absent
    python scripts/benchmark.py --model=cnn --local_dir /path/to/mnist_idx --batch_sizes=128 \
        --rounds=3   # configs/cnn.py against Keras and PyTorch eager, alternating, three rounds

Each contender runs in a fresh process on the same arrays; see benchmarks/training_speed.py.
"""

import json
import platform
import time

import os
import sys

# The benchmarks live beside the package, in the checkout, not in what is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from benchmarks import training_speed
from mlp_mnist import cli

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['32', '128', '1024'], 'Batch sizes.')
_EPOCHS = flags.DEFINE_integer('epochs', 5, 'Epochs per run.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: 1 epoch at batch 1024, short matmul probe.')
_MODEL = flags.DEFINE_enum('model', 'mlp', training_speed.MODELS,
                           'mlp: configs/default.py; cnn: configs/cnn.py, against Keras and PyTorch.')
_CONTENDERS = flags.DEFINE_list(
    'contenders', None, f'Contenders to run (default: {training_speed.CONTENDERS} for the MLP, '
    f'{training_speed.CNN_CONTENDERS} for the CNN).')
_ROUNDS = flags.DEFINE_integer('rounds', 1, 'Runs of every contender, alternating.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data directory ('' for TFDS' default).")
_LOCAL_DIR = flags.DEFINE_string('local_dir', '', 'Directory of MNIST IDX files (offline).')
_CACHE_DIR = flags.DEFINE_string('cache_dir', '', "Decoded dataset cache ('' for the default).")
_JAX_CACHE_DIR = flags.DEFINE_string(
    'jax_cache_dir', cli.DEFAULT_COMPILATION_CACHE,
    "scripts/train.py's persistent compilation cache ('' turns it off).")
_KERAS_BACKEND = flags.DEFINE_enum(
    'keras_backend', 'tensorflow', training_speed.KERAS_BACKENDS,
    "The Keras program's backend: tensorflow (tensorflow.keras) or jax (where TensorFlow cannot "
    'be installed; docs/benchmarks.md, GPU).')
_OUT = flags.DEFINE_string('out', '', 'Write OUT.json and OUT.md.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  known = training_speed.CNN_CONTENDERS if _MODEL.value == 'cnn' else training_speed.CONTENDERS
  contenders = _CONTENDERS.value or list(known)
  unknown = set(contenders) - set(known)
  if unknown:
    raise app.UsageError(f'unknown contenders {sorted(unknown)} for --model={_MODEL.value}; '
                         f'use {known}')
  quick = _QUICK.value
  result = training_speed.run_benchmark(
      batch_sizes=[1024] if quick else [int(b) for b in _BATCH_SIZES.value],
      epochs=1 if quick else _EPOCHS.value, data_dir=_DATA_DIR.value,
      local_dir=_LOCAL_DIR.value, cache_dir=_CACHE_DIR.value,
      jax_cache_dir=_JAX_CACHE_DIR.value, contenders=contenders,
      keras_backend=_KERAS_BACKEND.value, model=_MODEL.value, rounds=_ROUNDS.value,
      matmul_sizes=(256, 512) if quick else (512, 1024, 2048))
  result['machine'] = f'{platform.machine()}, {platform.processor() or platform.system()}'
  result['date'] = time.strftime('%Y-%m-%d')
  table = (training_speed.markdown_table(result['rows']) + '\n\n' +
           (training_speed.layer_table(result) if _MODEL.value == 'cnn'
            else training_speed.roofline_shares(result['rows'])))
  print(table)
  if _OUT.value:
    with open(f'{_OUT.value}.json', 'w') as f:
      json.dump(result, f, indent=2)
    with open(f'{_OUT.value}.md', 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
