r"""A small convnet, the Keras tutorial's next step, that reaches 99% test accuracy on MNIST.

Two blocks of [3x3 conv (16, then 32 channels) -> relu -> 2x2 max-pool], a 128-wide dense layer
with dropout 0.25, then the logits; Adam at a peak learning rate of 3e-3 with 0.3 epochs of linear
warmup and cosine decay to zero, batch 128, 5 epochs. docs/benchmarks.md gives the measured
accuracy and time per seed.

    python scripts/train.py --config configs/cnn.py --config.data.local_dir=/path/to/mnist_idx

Seeds 0-2 as one vectorized sweep:

    python scripts/sweep.py --config configs/cnn.py --sweep configs/sweeps/seeds.py \
        --workdir runs/cnn_seeds --config.data.local_dir=/path/to/mnist_idx
"""

# The recipe ships with the package (mlp_mnist/configs/cnn.py), so a config file anywhere builds on
# it by name: config_files.shipped_config('cnn').
from mlp_mnist.configs.cnn import get_config  # pylint: disable=unused-import
