r"""Width x depth: 1 to 3 hidden layers of 64 to 512 units (12 trials).

Each architecture is its own program: the 12 trials run as 12 groups, one after another.

Every trial holds out the same 10,000 training examples as a validation split (the sweep file
fixes `data.validation_split`, whatever the base config says): the leaderboard, the tables and the
progress line choose by validation accuracy and show test accuracy beside it, never choosing by it.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/width_depth.py \
        --workdir runs/width_depth
"""

VALIDATION_EXAMPLES = 10_000

WIDTHS = (64, 128, 256, 512)
DEPTHS = (1, 2, 3)


def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', VALIDATION_EXAMPLES),
      hyper.sweep('model.hidden_sizes', [(width,) * depth for depth in DEPTHS for width in WIDTHS]),
  ])
