r"""Learning rate x seed: 8 Adam learning rates around the Keras default, 4 seeds each.

32 trials that differ only in values the steps take as arrays, so they train together in one
compiled program (vectorized over trials, spread over the local devices).

Every trial holds out the same 10,000 training examples as a validation split (the sweep file
fixes `data.validation_split`, whatever the base config says): the leaderboard, the tables and the
progress line choose by validation accuracy and show test accuracy beside it, never choosing by it.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/lr_seed.py \
        --workdir runs/lr_seed
"""

VALIDATION_EXAMPLES = 10_000


def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', VALIDATION_EXAMPLES),
      hyper.sweep('optimizer.learning_rate', [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]),
      hyper.sweep('seed', range(4)),
  ])
