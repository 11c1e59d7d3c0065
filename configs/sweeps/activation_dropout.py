r"""Activation x dropout rate: 4 activations, without dropout and with 3 rates (16 trials).

Per activation, the three dropout rates above zero share one program and the rate 0 (no dropout
ops at all) has its own: 8 groups.

Every trial holds out the same 10,000 training examples as a validation split (the sweep file
fixes `data.validation_split`, whatever the base config says): the leaderboard, the tables and the
progress line choose by validation accuracy and show test accuracy beside it, never choosing by it.

    python scripts/sweep.py --config configs/default.py \
        --sweep configs/sweeps/activation_dropout.py --workdir runs/activation_dropout
"""

VALIDATION_EXAMPLES = 10_000


def get_sweep(hyper):
  return hyper.product([
      hyper.fixed('data.validation_split', VALIDATION_EXAMPLES),
      hyper.sweep('model.activation', ['relu', 'gelu', 'tanh', 'sigmoid']),
      hyper.sweep('model.dropout_rate', [0.0, 0.1, 0.2, 0.4]),
  ])
