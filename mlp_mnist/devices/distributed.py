"""Multi-process (multi-host) JAX: `jax.distributed.initialize` before any other JAX use.

On a TPU VM pod slice, and under SLURM or Open MPI, JAX finds the coordinator, the process count and
this process's id by itself. Elsewhere (plain multi-node GPU clusters, local tests) give them
explicitly, as flags or as JAX's standard environment variables `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.
"""

import os

from mlp_mnist import errors

MODES = ('auto', 'on', 'off')


class DistributedError(errors.UserError, RuntimeError):
  """The multi-process set-up is incomplete or failed; the message says what to give."""


def _int_env(name: str) -> int | None:
  value = os.environ.get(name, '')
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f'{name}={value!r} is not an integer.') from None


def _cluster_detected() -> bool:
  """Whether this looks like one process of several that JAX can auto-detect."""
  tpu_hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return (',' in tpu_hosts or int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1 or
          int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1)


def initialize(mode: str = 'auto', coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1, initialization_timeout_sec: int = 300,
               heartbeat_timeout_sec: int = 60) -> bool:
  """Joins the other processes when there are any; returns whether this run is multi-process.

  `mode='auto'` initializes when a coordinator or process count is given (flags or environment)
  or a TPU pod slice / SLURM / Open MPI job is detected; 'on' always, 'off' never. If a process
  dies, the others fail within about `heartbeat_timeout_sec` instead of hanging.
  """
  if mode not in MODES:
    raise DistributedError(f'--distributed={mode!r}: use one of {MODES}.')
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or _int_env('JAX_NUM_PROCESSES') or 0
  if process_id < 0:
    env_id = _int_env('JAX_PROCESS_ID')
    process_id = -1 if env_id is None else env_id
  explicit = bool(coordinator_address) or num_processes > 1
  if mode == 'off' or (mode == 'auto' and not explicit and not _cluster_detected()):
    return False
  if explicit and not (coordinator_address and num_processes and process_id >= 0):
    raise DistributedError(
        'a multi-process run needs all three of --coordinator_address (host:port of process 0), '
        '--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
        f'JAX_PROCESS_ID); got {coordinator_address or "no address"}, '
        f'{num_processes or "no count"}, {process_id if process_id >= 0 else "no id"}.')
  if explicit and not 0 <= process_id < num_processes:
    raise DistributedError(f'--process_id={process_id} must be in [0, {num_processes}).')

  import jax  # pylint: disable=g-import-not-at-top
  # Cross-process collectives between CPU devices (local tests, CPU clusters) go through gloo;
  # GPU and TPU collectives are unaffected.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes or None,
        process_id=process_id if process_id >= 0 else None,
        initialization_timeout=initialization_timeout_sec,
        heartbeat_timeout_seconds=heartbeat_timeout_sec)
  except Exception as e:  # jax raises RuntimeError/ValueError/XlaRuntimeError here.
    raise DistributedError(f'jax.distributed.initialize failed: {e}'.splitlines()[0]) from e
  return jax.process_count() > 1
