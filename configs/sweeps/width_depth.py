r"""Width x depth: 1 to 3 hidden layers of 64 to 512 units (12 trials).

Each architecture is its own program: the 12 trials run as 12 groups, one after another.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/width_depth.py \
        --workdir runs/width_depth
"""

WIDTHS = (64, 128, 256, 512)
DEPTHS = (1, 2, 3)


def get_sweep(hyper):
  return hyper.sweep('model.hidden_sizes',
                     [(width,) * depth for depth in DEPTHS for width in WIDTHS])
