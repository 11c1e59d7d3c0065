"""How a run was made: software versions, devices, the code's git commit, the command line."""

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from typing import Any, Sequence

import jax
from etils import epath

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
            'numpy', 'ml-collections')
PROVENANCE_FILE = 'provenance.json'


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


def collect(devices: Sequence[jax.Device], resumed_from_step: int | None) -> dict[str, Any]:
  """One record of this process's run: when, where, with what, resumed from which step."""
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
  }


def append(workdir: str, record: dict[str, Any]) -> None:
  """Adds `record` to the workdir's `provenance.json`: one entry per start, resumes included."""
  path = epath.Path(workdir) / PROVENANCE_FILE
  records = json.loads(path.read_text()) if path.exists() else []
  path.write_text(json.dumps(records + [record], indent=2) + '\n')


def read(workdir: str) -> list[dict[str, Any]]:
  return json.loads((epath.Path(workdir) / PROVENANCE_FILE).read_text())
