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

from mlp_mnist.configs import default


def get_config():
  config = default.get_config()
  config.model.name = 'cnn'
  config.model.cnn.features = (16, 32)
  config.model.cnn.kernel_size = 3
  config.model.cnn.dense_width = 128
  config.model.dropout_rate = 0.25
  config.batch_size = 128
  config.num_epochs = 5
  config.optimizer.learning_rate = 3e-3
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_epochs = 0.3
  return config
