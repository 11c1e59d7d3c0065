r"""Quasi-random search: 64 settings of Adam's learning rate (log range), b1 and epsilon (log
range) and the dropout rate, from a scrambled Halton sequence, 2 seeds each: 128 trials that
differ only in values the steps take as arrays, so they train as one compiled program.

Every trial holds out the same 10,000 training examples as a validation split, which ranks them.

    python scripts/sweep.py --config configs/default.py --sweep configs/sweeps/quasirandom_adam.py \
        --workdir runs/quasirandom_adam --config.num_epochs=4

`quasirandom_adam_halving.py` runs the same trials with successive halving.
"""

VALIDATION_EXAMPLES = 10_000
NUM_SETTINGS = 64


def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', VALIDATION_EXAMPLES),
      hyper.quasirandom([
          hyper.loguniform('optimizer.learning_rate', 3e-5, 3e-2),
          hyper.uniform('optimizer.b1', 0.7, 0.99),
          hyper.loguniform('optimizer.eps', 1e-9, 1e-4),
          hyper.uniform('model.dropout_rate', 0.05, 0.5),  # Above zero: one program.
      ], num_trials=NUM_SETTINGS, seed=0),
      hyper.sweep('seed', range(2)),
  ])
