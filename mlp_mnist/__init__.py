"""mlp_mnist: multilayer perceptrons on MNIST with JAX, Flax and optax."""
