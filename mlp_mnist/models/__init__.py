"""Models by name: `create_model(config.model, num_classes)` builds the one `config.model.name`
selects from the registry `MODELS`.

A model is a flax.linen module called as `model.apply({'params': p}, images, dropout_rate,
dropout_rngs)`: images [batch, *input_shape] scaled to [0, 1], the dropout rate a value (not a
Python constant, so vectorized sweeps over it share one program) and one dropout key per example (so
results do not depend on how a batch is split over devices). Its input shape and class count come
from the data. Adding one is a function `build(model_config, num_classes)` registered with
`@MODELS.register(name, defaults=..., schema=...)`, its keys under `config.model.<name>`, in a
file of yours named in `config.imports` (docs/extending.md).
"""

from mlp_mnist import registry
from mlp_mnist.models import cnn
from mlp_mnist.models import mlp

MODELS = registry.Registry('model', 'model')
ACTIVATIONS = mlp.ACTIVATIONS
MLP = mlp.MLP
CNN = cnn.CNN

# The MLP's keys predate the registry and stay at the top of config.model.
MODELS.register('mlp', defaults={'hidden_sizes': (128,), 'activation': 'relu'},
                schema=mlp.CONFIG_SCHEMA)(mlp.from_config)
MODELS.register('cnn', defaults={'cnn.features': (16, 32), 'cnn.kernel_size': 3,
                                 'cnn.dense_width': 128, 'cnn.activation': 'relu'},
                schema=cnn.CONFIG_SCHEMA)(cnn.from_config)


def create_model(model_config, num_classes: int):
  """The model `model_config.name` names (default: 'mlp'), built from `model_config`, with
  `num_classes` outputs."""
  return MODELS[model_config.get('name', 'mlp')].build(model_config, num_classes)
