"""How a run was made: software versions, devices, the code's git commit, the command line, and
the researcher's own code it imported (`config.imports`: each file's path and SHA-256, and a copy
in the workdir's `imports/`, which evaluation imports when the original is gone)."""

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import jax
from etils import epath

from mlp_mnist.records import run_files

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
            'numpy', 'ml-collections')
PROVENANCE_FILE = 'provenance.json'
IMPORTS_DIR = 'imports'


def package_versions() -> dict[str, str | None]:
  """Installed versions, read from package metadata (importing tfds would import TensorFlow)."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def git_state(path: str) -> dict[str, Any] | None:
  """The commit checked out where `path` lives and whether tracked files differ from it."""

  def git(*args):
    return subprocess.run(['git', '-C', path, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()

  try:
    commit = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return None
  return {'commit': commit, 'dirty': dirty}


def _source_file(entry: str) -> str | None:
  """The file an entry of `config.imports` runs: the path itself, or a module's file."""
  if entry.endswith('.py'):
    return os.path.abspath(os.path.expanduser(entry))
  try:
    spec = importlib.util.find_spec(entry)
  except (ImportError, ValueError):
    return None
  return spec.origin if spec and spec.origin and os.path.isfile(spec.origin) else None


def keep_imports(workdir: str, imports: Sequence[str]) -> list[dict[str, Any]]:
  """Copies the file of each entry of `imports` into `workdir/imports/`; returns one record per
  entry: the entry, its file's path and SHA-256, and the copy's path in the workdir."""
  records = []
  for index, entry in enumerate(imports):
    path = _source_file(entry)
    if path is None or not os.path.isfile(path):
      records.append({'entry': entry, 'path': path, 'sha256': None, 'copy': None})
      continue
    with open(path, 'rb') as f:
      content = f.read()
    copy = f'{IMPORTS_DIR}/{index}-{os.path.basename(path)}'
    target = epath.Path(workdir) / copy
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    records.append({'entry': entry, 'path': path,
                    'sha256': hashlib.sha256(content).hexdigest(), 'copy': copy})
  return records


def available_imports(workdir: str, imports: Sequence[str]) -> tuple[str, ...]:
  """`imports` with each `.py` file that no longer exists (and each module that can no longer be
  found) replaced by its copy in the workdir, when the run recorded one."""
  try:
    records = read(workdir)
  except run_files.WorkdirError:
    records = []
  copies = {r['entry']: r['copy'] for record in records for r in record.get('imports', ())
            if r.get('copy')}
  resolved = []
  for entry in imports:
    gone = (not os.path.exists(os.path.expanduser(entry)) if entry.endswith('.py')
            else _source_file(entry) is None)
    copy = epath.Path(workdir) / copies[entry] if entry in copies else None
    resolved.append(os.fspath(copy) if gone and copy is not None and copy.exists() else entry)
  return tuple(resolved)


def collect(devices: Sequence[jax.Device], resumed_from_step: int | None,
            imports: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
  """One record of this process's run: when, where, with what, resumed from which step, with
  which files of the researcher's own (`keep_imports`)."""
  return {
      'started': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'resumed_from_step': resumed_from_step,
      'command': sys.argv,
      'host': socket.gethostname(),
      'python': platform.python_version(),
      'packages': package_versions(),
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'git': git_state(os.path.dirname(os.path.abspath(__file__))),
      'imports': list(imports),
  }


def append(workdir: str, record: dict[str, Any],
           warn: Callable[[str], Any] = print) -> None:
  """Adds `record` to the workdir's `provenance.json`: one entry per start, resumes included.

  The file is informational: a damaged one is renamed `provenance.json.damaged-<time>` (kept for
  a person to read), reported through `warn`, and started afresh rather than stopping the run.
  """
  path = epath.Path(workdir) / PROVENANCE_FILE
  records = []
  if path.exists():
    try:
      records = read(workdir)
    except run_files.WorkdirError as e:
      kept = path.parent / f'{PROVENANCE_FILE}.damaged-{time.strftime("%Y%m%d-%H%M%S")}'
      path.rename(kept)
      warn(f'warning: {path} is damaged ({e.__cause__ or "not a list of records"}); moved it to '
           f'{kept} and started a new one.')
  run_files.write_text_atomic(path, json.dumps(records + [record], indent=2) + '\n')


def read(workdir: str) -> list[dict[str, Any]]:
  """The records of `provenance.json` (none when it is absent); a damaged file is a WorkdirError."""
  if not (epath.Path(workdir) / PROVENANCE_FILE).exists():
    return []
  records = run_files.read_json(epath.Path(workdir) / PROVENANCE_FILE,
                                'delete it (it only describes earlier starts)')
  if not isinstance(records, list):
    raise run_files.WorkdirError(f'{epath.Path(workdir) / PROVENANCE_FILE} is damaged (not a '
                                 'list of records); delete it (it only describes earlier starts).')
  return records


def device_change(workdir: str, devices: Sequence[jax.Device]) -> str | None:
  """A warning when the run in `workdir` last ran on another number of devices or processes (its
  `provenance.json`): sums then run in another order, so the resumed run may follow another
  trajectory than an uninterrupted one. None when the counts match or nothing was recorded."""
  try:
    earlier = [r for r in read(workdir) if isinstance(r, dict) and 'device_count' in r]
  except run_files.WorkdirError:
    return None
  if not earlier:
    return None
  was = (earlier[-1]['device_count'], earlier[-1].get('process_count', 1))
  now = (len(devices), jax.process_count())
  if was == now:
    return None
  return (f'warning: {workdir} was trained on {was[0]} device(s) in {was[1]} process(es) and '
          f'resumes on {now[0]} in {now[1]}; the sums over devices change order, so its numbers '
          'may differ from an uninterrupted run\'s (resume on the same devices to reproduce it).')
