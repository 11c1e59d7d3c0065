r"""Activation x dropout rate: 4 activations, without dropout and with 3 rates (16 trials).

Per activation, the three dropout rates above zero share one program and the rate 0 (no dropout
ops at all) has its own: 8 groups.

    python scripts/sweep.py --config configs/default.py \
        --sweep configs/sweeps/activation_dropout.py --workdir runs/activation_dropout
"""


def get_sweep(hyper):
  return hyper.product([
      hyper.sweep('model.activation', ['relu', 'gelu', 'tanh', 'sigmoid']),
      hyper.sweep('model.dropout_rate', [0.0, 0.1, 0.2, 0.4]),
  ])
