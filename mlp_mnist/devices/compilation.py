"""Ahead-of-time compilation of the pmapped programs, with the CPU options measured to be faster."""

from typing import Any, Callable, Hashable

import jax

# XLA's YNNPACK fusions on CPUs speed up large matmuls and slow down small ones. Measured on a 2-core
# Xeon, whole epochs: 32-row steps ~20% faster without them, 128 ~8%; 256 and 512 even; 1024 ~8%
# slower without.
_CPU_YNN_MIN_ROWS = 256
_YNN_FUSION_TYPES = 'xla_cpu_experimental_ynn_fusion_type'
CPU_WITHOUT_YNN = {_YNN_FUSION_TYPES: ''}
# A convolutional model's matmuls multiply batch x positions rows, and its bias gradients are large
# reductions: YNNPACK's fusions of single dots and of reductions (not its elementwise fusions, nor
# its convolutions) made configs/cnn.py's scanned step faster at every batch size measured (a
# 2-core Xeon, jax 0.10.2; docs/benchmarks.md), against no YNNPACK and its default fusions: batch
# 32: 1.95 against 2.13 and 2.35 ms; 128: 6.01 against 6.54 and 8.19; 256: 12.5 against 13.4 and
# 15.9. Its dot fusions with their operands' elementwise ops (`LIBRARY_FUSION_TYPE_DOT`) ran as fast
# but computed NaNs for relu(convolution) reshaped into a dot (jax 0.10.2 and 0.12; the program in
# tests/test_train.py).
CPU_CONV_YNN_DOTS_AND_REDUCTIONS = {
    _YNN_FUSION_TYPES: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


def compile_program(lowered, platform: str, rows: int):
  """Compiles `lowered`, whose steps multiply `rows` examples per device (per trial in a sweep).

  On CPUs, programs with convolutions take YNNPACK's fusions of single dots and of reductions;
  others with fewer than 256 rows leave out YNNPACK's fusions.
  """
  if platform != 'cpu':
    return lowered.compile()
  if 'stablehlo.convolution' in lowered.as_text():  # 2 ms for the MLP's epoch, 9 for the CNN's.
    return compile_with_options(lowered, CPU_CONV_YNN_DOTS_AND_REDUCTIONS)
  if rows < _CPU_YNN_MIN_ROWS:
    return compile_with_options(lowered, CPU_WITHOUT_YNN)
  return lowered.compile()


class ProgramsByShape:
  """Programs compiled ahead of time (`compile_program`) for one platform, each at the first call
  of its shape: a training function's calls of each number of steps (whole epochs, calls inside
  epochs, a resumed epoch's rest), an evaluation's splits."""

  def __init__(self, platform: str):
    self.platform = platform
    self._programs = {}

  def get(self, shape: Hashable, lower: Callable[[], Any], rows: int):
    """The program for `shape`; at its first call, `lower()` (whose steps multiply `rows` examples
    per device) compiled."""
    if shape not in self._programs:
      self._programs[shape] = compile_program(lower(), self.platform, rows)
    return self._programs[shape]

  def find(self, shape: Hashable, default):
    """The program compiled for `shape`, or `default` where none was."""
    return self._programs.get(shape, default)


def compile_with_options(lowered, options: dict[str, Any]):
  """`lowered.compile(options)`; without them where this version of XLA does not know them (or
  one of their values)."""
  try:
    return lowered.compile(options)
  except jax.errors.JaxRuntimeError as e:
    if 'No such compile option' not in str(e) and 'is not a valid enum value' not in str(e):
      raise
  return lowered.compile()
