r"""Optimizer comparison: Adam, AdamW, SGD (plain and Nesterov momentum) and RMSProp, each at three
learning rates suited to it (12 trials; one program per optimizer, 4 groups).

Every trial holds out the same 10,000 training examples as a validation split (the sweep file
fixes `data.validation_split`, whatever the base config says): the leaderboard, the tables and the
progress line choose by validation accuracy and show test accuracy beside it, never choosing by it.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/optimizers.py \
        --workdir runs/optimizers
"""

VALIDATION_EXAMPLES = 10_000


def get_sweep(hyper):
  optimizers = hyper.chain([
      hyper.product([hyper.fixed('optimizer.name', 'adam'),
                     hyper.sweep('optimizer.learning_rate', [3e-4, 1e-3, 3e-3])]),
      hyper.product([hyper.fixed('optimizer.name', 'adamw'),
                     hyper.fixed('optimizer.weight_decay', 1e-4),
                     hyper.sweep('optimizer.learning_rate', [3e-4, 1e-3, 3e-3])]),
      # Plain SGD at a large learning rate, Nesterov momentum at smaller ones: pairs, not a grid.
      hyper.product([hyper.fixed('optimizer.name', 'sgd'),
                     hyper.fixed('optimizer.nesterov', True),
                     hyper.zip([hyper.sweep('optimizer.learning_rate', [0.1, 0.01, 0.03]),
                                hyper.sweep('optimizer.momentum', [0.0, 0.9, 0.9])])]),
      # Keras' RMSprop: rho (our b2) 0.9, no momentum.
      hyper.product([hyper.fixed('optimizer.name', 'rmsprop'),
                     hyper.fixed('optimizer.b2', 0.9), hyper.fixed('optimizer.momentum', 0.0),
                     hyper.sweep('optimizer.learning_rate', [3e-4, 1e-3, 3e-3])]),
  ])
  return hyper.product([hyper.fixed('data.validation_split', VALIDATION_EXAMPLES), optimizers])
