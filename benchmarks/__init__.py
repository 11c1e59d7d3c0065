"""Benchmarks beside the package, never installed with it: this codebase against the Keras tutorial
program, a naive JAX loop and the matmul roofline (`training_speed`, `roofline`), and a sweep trained
vectorized against its trials one at a time (`sweep_speed`). Entry points: `scripts/benchmark.py`,
`scripts/benchmark_sweep.py`."""
