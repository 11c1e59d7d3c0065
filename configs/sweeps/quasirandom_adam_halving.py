r"""The trials of `quasirandom_adam.py` (64 quasi-random Adam settings x 2 seeds) with successive
halving inside the program: after epoch 1 the best sixth of the settings (seeds averaged, by
validation accuracy) go on, after epoch 2 the best sixth of those; the others are `pruned`, their
records kept, and cost no more steps.

    python scripts/sweep.py --config configs/default.py \
        --sweep configs/sweeps/quasirandom_adam_halving.py \
        --workdir runs/quasirandom_adam_halving --config.num_epochs=4
"""

import os

from mlp_mnist import config_files

get_sweep = config_files.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'quasirandom_adam.py')).get_sweep

SUCCESSIVE_HALVING = {'rungs': (1, 2), 'reduction_factor': 6, 'metric': 'validation_accuracy'}
