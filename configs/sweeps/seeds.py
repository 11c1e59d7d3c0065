r"""Seeds 0-2 of the base config: its spread over initializations, dropout masks and data orders.

Trials differ only in the seed, so they train together as one vectorized program.

    python scripts/sweep.py --config configs/cnn.py --sweep configs/sweeps/seeds.py \
        --workdir runs/cnn_seeds
"""


def get_sweep(hyper):
  return hyper.sweep('seed', range(3))
