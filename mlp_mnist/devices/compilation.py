"""Ahead-of-time compilation of the pmapped programs, with the CPU options measured to be faster."""

from typing import Any

import jax

# XLA's YNNPACK fusions on CPUs speed up large matmuls and slow down small ones. Measured on a 2-core
# Xeon, whole epochs: 32-row steps ~20% faster without them, 128 ~8%; 256 and 512 even; 1024 ~8%
# slower without.
_CPU_YNN_MIN_ROWS = 256
CPU_WITHOUT_YNN = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compile_program(lowered, platform: str, rows: int):
  """Compiles `lowered`, whose steps multiply `rows` examples per device (per trial in a sweep).

  CPU programs with fewer than 256 rows leave out XLA's YNNPACK fusions.
  """
  if platform == 'cpu' and rows < _CPU_YNN_MIN_ROWS:
    return compile_with_options(lowered, CPU_WITHOUT_YNN)
  return lowered.compile()


def compile_with_options(lowered, options: dict[str, Any]):
  """`lowered.compile(options)`; without them where this version of XLA does not know them."""
  try:
    return lowered.compile(options)
  except jax.errors.JaxRuntimeError as e:
    if 'No such compile option' not in str(e):
      raise
  return lowered.compile()
