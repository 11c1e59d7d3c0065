r"""The classic Keras MNIST tutorial recipe, reproduced exactly.

Flatten(28x28) -> Dense(128, relu) -> Dense(10, softmax) with Keras' Glorot-uniform initialization;
sparse categorical cross-entropy; Adam with Keras' defaults (lr 1e-3, beta1 0.9, beta2 0.999,
epsilon 1e-7, added to sqrt(v) before bias correction as Keras does); batch 32; 5 epochs; pixels
/ 255; training data reshuffled every epoch; evaluation on all 10,000 test images.

    python scripts/train.py --config configs/default.py --config.data.local_dir=/path/to/mnist_idx

Any value can be overridden, e.g. `--config.optimizer.learning_rate=3e-4
--config.model.hidden_sizes='(256,256)'`.
"""

# The recipe ships with the package (mlp_mnist/configs/default.py), so a config file anywhere builds on
# it by name: config_files.shipped_config('default').
from mlp_mnist.configs.default import get_config  # pylint: disable=unused-import
