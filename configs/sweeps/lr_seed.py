r"""Learning rate x seed: 8 Adam learning rates around the Keras default, 4 seeds each.

32 trials that differ only in values the steps take as arrays, so they train together in one
compiled program (vectorized over trials, spread over the local devices).

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/lr_seed.py \
        --workdir runs/lr_seed
"""


def get_sweep(hyper):
  return hyper.product([
      hyper.sweep('optimizer.learning_rate', [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]),
      hyper.sweep('seed', range(4)),
  ])
