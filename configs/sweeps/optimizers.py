r"""Optimizer comparison: Adam, AdamW, SGD (plain and Nesterov momentum) and RMSProp, each at three
learning rates suited to it (12 trials; one program per optimizer, 4 groups).

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/optimizers.py \
        --workdir runs/optimizers
"""


def get_sweep(hyper):
  return hyper.chain([
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
