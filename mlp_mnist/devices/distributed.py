"""Multi-process (multi-host) JAX: `jax.distributed.initialize` before any other JAX use.

On Cloud TPU VM pod slices (through the metadata server), GKE TPU slices, SLURM jobs, Open MPI
jobs and Kubernetes jobs, JAX's own cluster detection finds the coordinator, the process count and
this process's id. Elsewhere (plain multi-node GPU clusters, local tests) give them explicitly:
flags, or the environment variables `JAX_COORDINATOR_ADDRESS` (read by JAX itself),
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (read by this module only).
"""

import os

from mlp_mnist import errors
from mlp_mnist import workarounds

MODES = ('auto', 'on', 'off')
# MPI launchers that Open MPI's own detection (OMPI_MCA_orte_hnp_uri) does not cover: MPICH/Intel
# MPI (hydra), PMIx launchers and MVAPICH. Under them JAX needs mpi4py, which it only uses on request.
_MPI_LAUNCHER_VARIABLES = ('PMI_SIZE', 'PMIX_RANK', 'MV2_COMM_WORLD_SIZE')


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


def detected_cluster():
  """The cluster environment that `jax.distributed.initialize()` would use here, or None.

  Asks JAX's own `ClusterEnv` classes, in JAX's order, as `initialize()` does; mpi4py (opt-in in
  JAX) only when it is installed and an MPI launcher started this process. Costs microseconds where
  there is no cluster: only the TPU check asks a server, and only on a Cloud TPU VM. JAX's list of
  cluster environments is private (`workarounds.jax_cluster_types` says why).
  """
  cluster_types = workarounds.jax_cluster_types()
  candidates = [env for env in cluster_types if not env.opt_in_only_method]
  env = next((env for env in candidates if env.is_env_present()), None)
  if env is None and any(name in os.environ for name in _MPI_LAUNCHER_VARIABLES):
    env = next((env for env in cluster_types
                if env.name == 'mpi4py' and env.is_env_present()), None)
  return env


def _cluster_process_count(env) -> int | None:
  """How many processes `env` says this run has (a SLURM job step's own task count)."""
  if env.name == 'slurm':
    # A step started with `srun -n1` (or a script run directly) inside a larger allocation: JAX
    # would read the allocation's SLURM_NTASKS and wait for peers that never start.
    step_tasks = _int_env('SLURM_STEP_NUM_TASKS')
    if step_tasks:
      return step_tasks
  try:
    return env.get_process_count()
  except Exception:  # pylint: disable=broad-except
    return None  # jax.distributed.initialize will report it.


def initialize(mode: str = 'auto', coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1, initialization_timeout_sec: int = 300,
               heartbeat_timeout_sec: int = 60) -> bool:
  """Joins the other processes when there are any; returns whether this run is multi-process.

  `mode='auto'` initializes when a coordinator or process count is given (flags or environment)
  or JAX detects a cluster of more than one process; a cluster of one process (a single SLURM
  task, `mpirun -n 1`) trains alone. 'on' always initializes, 'off' never. If a process dies, the
  others fail within about `heartbeat_timeout_sec` instead of hanging.
  """
  if mode not in MODES:
    raise DistributedError(f'--distributed={mode!r}: use one of {MODES}.')
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or _int_env('JAX_NUM_PROCESSES') or 0
  if process_id < 0:
    env_id = _int_env('JAX_PROCESS_ID')
    process_id = -1 if env_id is None else env_id
  if mode == 'off':
    return False
  explicit = bool(coordinator_address) or num_processes > 1
  complete = bool(coordinator_address) and num_processes > 0 and process_id >= 0
  cluster = None if complete else detected_cluster()
  if cluster is None:
    if not explicit and mode == 'auto':
      return False
    if not complete:
      raise DistributedError(
          'a multi-process run needs all three of --coordinator_address (host:port of process 0), '
          '--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
          'JAX_PROCESS_ID), unless JAX detects the cluster (Cloud TPU VM, GKE, SLURM, Open MPI, '
          f'Kubernetes); got {coordinator_address or "no address"}, '
          f'{num_processes or "no count"}, {process_id if process_id >= 0 else "no id"}.')
  elif not num_processes:
    count = _cluster_process_count(cluster)
    if count == 1 and mode == 'auto':
      return False
    if cluster.name == 'slurm' and count:
      num_processes = count
  if num_processes and process_id >= 0 and not 0 <= process_id < num_processes:
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
        cluster_detection_method=cluster.name if cluster is not None and not complete else None,
        initialization_timeout=initialization_timeout_sec,
        heartbeat_timeout_seconds=heartbeat_timeout_sec)
  except Exception as e:  # jax raises RuntimeError/ValueError/XlaRuntimeError here.
    raise DistributedError(f'jax.distributed.initialize failed: {e}'.splitlines()[0]) from e
  return jax.process_count() > 1
