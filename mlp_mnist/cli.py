"""What the scripts share: turning known failures into one clear line and an exit status."""

import contextlib
import gc
import logging
import os
import re
import sys

from mlp_mnist import errors
from mlp_mnist import workarounds
from mlp_mnist.devices import distributed

DEFAULT_COMPILATION_CACHE = os.path.join('~', '.cache', 'mlp_mnist', 'jax')


def enable_compilation_cache(cache_dir: str) -> None:
  """Keeps compiled programs on disk, so a second run of the same config skips compilation."""
  if not cache_dir:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', os.path.expanduser(cache_dir))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def define_jax_flags() -> None:
  """The flags of every training entry point: the compilation cache and the multi-process set-up
  (see mlp_mnist/devices/distributed.py). `set_up_jax` acts on them."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('jax_cache_dir', DEFAULT_COMPILATION_CACHE,
                      "JAX's persistent compilation cache; '' turns it off.")
  flags.DEFINE_enum('distributed', 'auto', distributed.MODES,
                    "Multi-process JAX: auto (when the flags below or their environment "
                    "variables say so, or JAX's cluster detection finds several processes: Cloud "
                    "TPU VM slices, GKE, SLURM, Open MPI, Kubernetes), on, or off.")
  flags.DEFINE_string('coordinator_address', '',
                      'host:port of process 0 (multi-process runs; or JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', 0,
                       'Number of processes (multi-process runs; or JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', -1,
                       'This process, in [0, num_processes) (or JAX_PROCESS_ID).')
  flags.DEFINE_integer('heartbeat_timeout_sec', 60,
                       'A process that stops answering for this long fails the whole run.')


def set_up_jax() -> bool:
  """Joins the other processes and turns on the compilation cache, per `define_jax_flags`'s
  flags, before any other JAX use; returns whether this run has several processes."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  with exit_on_user_error():
    multiprocess = distributed.initialize(f.distributed, f.coordinator_address, f.num_processes,
                                          f.process_id,
                                          heartbeat_timeout_sec=f.heartbeat_timeout_sec)
  enable_compilation_cache(f.jax_cache_dir)
  return multiprocess


def split_cpu_into_devices(num_devices: int) -> None:
  """Makes a CPU-only machine `num_devices` JAX devices (0: one per core), so work spread over the
  devices, a sweep's trials say, runs on every core. Call before JAX starts; accelerators ignore it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', num_devices or os.cpu_count() or 1)


@contextlib.contextmanager
def exit_on_user_error():
  """Prints a user-facing error as one line on stderr and exits with status 2 (or the error's
  `exit_status`: 3 for `preemption.Preempted`), no traceback."""
  try:
    yield
  except errors.UserError as e:
    print(f'{getattr(e, "prefix", "error")}: {e}', file=sys.stderr)
    sys.exit(getattr(e, 'exit_status', 2))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with unknown config keys and bad values reported in one line (exit 2).

  absl logs at WARNING unless `--verbosity` is given.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    argv = flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    key, suggestion = workarounds.unknown_config_key(e)
    flag = next((a.split('=')[0] for a in argv[1:]
                 if a.startswith('--config.') and key in a.split('=')[0].split('.')), '--config')
    hint = f' (did you mean {suggestion!r}?)' if suggestion else ''
    print(f'error: {flag}: unknown config key {key!r}{hint}; the known keys are those of the '
          'config file (configs/default.py).', file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  # absl would raise the default to INFO after parsing; orbax logs every checkpoint at INFO.
  if flags.FLAGS['verbosity'].using_default_value:
    flags.FLAGS.verbosity = -1  # WARNING; --verbosity=0 shows INFO.
  for logger in ('absl', 'asyncio'):
    logging.getLogger(logger).addFilter(_DROP_STORAGE_TRACEBACKS_OF_CHECKPOINT_THREADS)
  return argv


def _is_storage_error(error: BaseException) -> bool:
  from mlp_mnist.records import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.is_storage_error(error)


# One filter object, so parsing flags twice in a process adds it once.
_DROP_STORAGE_TRACEBACKS_OF_CHECKPOINT_THREADS = workarounds.storage_traceback_filter(
    _is_storage_error)


def default_workdir() -> str:
  """A new folder under runs/ for a run started without --workdir: the time and this process's
  id, so runs started in the same second get different folders."""
  import time  # pylint: disable=g-import-not-at-top
  return os.path.join('runs', f'{time.strftime("%Y%m%d-%H%M%S")}-{os.getpid()}')


def checkpoint_step(value: str | None) -> int | str | None:
  """The `--step` flag of scripts that read a checkpoint: None (the latest), 'best' or a step."""
  if value is None or value == 'best':
    return value
  try:
    step = int(value)
  except ValueError:
    step = -1
  if step < 0:
    raise errors.UserError(f"--step={value!r} is not a checkpoint step: give a step number "
                           "(see the workdir's checkpoints/) or 'best'.")
  return step


def run_training(config, workdir: str, restart: bool = False) -> None:
  """Trains `config` into `workdir`, holding its lock (records/locks.py) for the whole run."""
  from mlp_mnist import train  # pylint: disable=g-import-not-at-top
  from mlp_mnist.records import locks  # pylint: disable=g-import-not-at-top
  with exit_on_user_error(), locks.held(workdir, 'run'):
    try:
      train.train_and_evaluate(config, workdir, restart=restart)
    except errors.UserError:
      raise
    except (RuntimeError, MemoryError) as e:
      if not is_out_of_memory(e):
        raise
      raise out_of_memory_error(e, config) from None


def skip_collection_at_exit() -> None:
  """Leaves the objects alive now out of the garbage collection the interpreter runs as it exits
  (`gc.freeze`), for a script whose work is done and whose files are closed: that collection walks
  every object of JAX, flax, optax, orbax and matplotlib (a warm `scripts/train.py` run's exit:
  0.22 against 0.03 s, 2-core Xeon, 2026-12-06). The operating system frees the memory."""
  gc.freeze()


# How XLA and the host say an allocation failed (at compile time or at the first call).
_OUT_OF_MEMORY = re.compile(r'RESOURCE_EXHAUSTED|[Oo]ut of memory|OOM when allocating|'
                            r'Failed to allocate|[Aa]llocation .* failed')


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` (JAX's JaxRuntimeError, a host MemoryError) is a failed allocation, not a
  full disk (tensorstore reports that as RESOURCE_EXHAUSTED too)."""
  if isinstance(error, MemoryError):
    return True
  text = str(error)
  return bool(_OUT_OF_MEMORY.search(text)) and 'No space left' not in text


def out_of_memory_error(error: BaseException, config) -> errors.UserError:
  """The one line for a run that does not fit in memory: what to lower, from the config."""
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:200]
  model = config.model
  width = (f'model.hidden_sizes={tuple(model.hidden_sizes)}' if model.name == 'mlp'
           else f'the widths in config.model.{model.name}')
  return errors.UserError(
      f'the run does not fit in memory ({reason}); lower batch_size (now {config.batch_size}), '
      f'eval_batch_size (now {config.eval_batch_size}) or the width ({width}), then rerun: a '
      'workdir without a checkpoint yet takes the new config without --restart.')
