"""Experiment trackers on request: Weights & Biases and MLflow runs that mirror a run's records.

Each writer takes what the TensorBoard writer takes (the config as hyperparameters, the scalars of
an epoch at its optimizer step), plus the final summary and files such as `curves.png`. The
packages are imported only when the config enables them (`config.tracking.wandb.enabled`,
`config.tracking.mlflow.enabled`). The tracked run's id is kept in the workdir's `tracking.json`,
so a resumed run continues the same tracked run; steps it already logged are not logged twice.

A tracker that cannot be used (package missing, service unreachable, a failure mid-run) costs one
warning, then training goes on without it. An MLflow server that does not accept a connection
within `MLFLOW_CONNECT_TIMEOUT_SEC` is unreachable (MLflow itself would retry for minutes).

A tracked run is named `tracking.<service>.run_name`, else after the workdir; a sweep's trials are
named after the trial.
"""

import json
import os
import socket
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterable

import ml_collections
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.records import run_files
from mlp_mnist.records import tensorboard

TRACKING_FILE = 'tracking.json'
SERVICES = ('wandb', 'mlflow')
NAMES = {'wandb': 'W&B', 'mlflow': 'MLflow'}
INSTALL = {'wandb': "pip install 'mlp_mnist[wandb]'", 'mlflow': "pip install 'mlp_mnist[mlflow]'"}
MLFLOW_MAX_PARAM_LENGTH = 6000
MLFLOW_BATCH = 100  # MLflow's limit of parameters per `log_batch`.
MLFLOW_CONNECT_TIMEOUT_SEC = 10.0


def requested(config: ml_collections.ConfigDict) -> bool:
  """Whether the config enables any tracker."""
  return any(config.tracking[s].enabled for s in SERVICES)


def scalars(record: dict) -> dict[str, float]:
  """An epoch record's scalars under their TensorBoard tags (`train/loss`, ...; a hook's under
  its key)."""
  return dict(tensorboard.scalars(record))


class Failures:
  """The trackers that failed, each reported once through `log`; shared by a sweep's trials."""

  def __init__(self, log: Callable[[str], Any]):
    self._log = log
    self.services = set()

  def report(self, service: str, error: BaseException) -> None:
    if service in self.services:
      return
    self.services.add(service)
    if isinstance(error, ImportError):
      detail = f'the package is not installed ({INSTALL[service]})'
    else:
      lines = str(error).strip().splitlines()
      detail = f'{type(error).__name__}: {lines[0][:300] if lines else ""}'
    self._log(f'warning: {NAMES[service]} tracking is off for this run: {detail}; '
              'training goes on without it.')


class WandbWriter:
  """A W&B run; `run_id` resumes one (`resume='allow'`). `local_dir` holds W&B's local files."""

  def __init__(self, settings: ml_collections.ConfigDict, name: str, run_id: str | None,
               local_dir: str | None, group: str = ''):
    import wandb  # pylint: disable=g-import-not-at-top
    self._wandb = wandb
    if local_dir:
      os.makedirs(local_dir, exist_ok=True)
    self._run = wandb.init(
        project=settings.project or None, entity=settings.entity or None, name=name,
        group=group or None, tags=list(settings.tags) or None, id=run_id,
        resume='allow' if run_id else None, mode=settings.mode, dir=local_dir,
        reinit='create_new')  # A sweep's trials are runs open side by side.
    self.run_id = self._run.id
    self.identity = {'project': settings.project, 'entity': settings.entity}

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    self._run.config.update(hparams, allow_val_change=True)

  def write_scalars(self, step: int, record: dict) -> None:
    self._run.log(scalars(record), step=step)

  def write_summary(self, summary: dict) -> None:
    self._run.summary.update(summary)

  def write_artifact(self, path: str) -> None:
    self._run.save(path, base_path=os.path.dirname(path), policy='now')

  def close(self, failed: bool = False) -> None:
    self._run.finish(exit_code=1 if failed else 0)


class MlflowWriter:
  """An MLflow run through `MlflowClient` (runs of a sweep's trials are open side by side)."""

  def __init__(self, settings: ml_collections.ConfigDict, name: str, run_id: str | None,
               tags: dict[str, str] | None = None):
    from mlflow import entities  # pylint: disable=g-import-not-at-top
    from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
    self._entities = entities
    self._client = MlflowClient(tracking_uri=settings.tracking_uri or None)
    check_reachable(self._client.tracking_uri, MLFLOW_CONNECT_TIMEOUT_SEC)
    self.identity = {'tracking_uri': self._client.tracking_uri, 'experiment': settings.experiment}
    if run_id:
      self._client.update_run(run_id, status='RUNNING')
      self._logged_params = set(self._client.get_run(run_id).data.params)
    else:
      experiment = self._client.get_experiment_by_name(settings.experiment)
      experiment_id = (experiment.experiment_id if experiment
                       else self._client.create_experiment(settings.experiment))
      all_tags = {**_tag_dict(settings.tags), **(tags or {})}
      run_id = self._client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id
      self._logged_params = set()
    self.run_id = run_id

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    # MLflow refuses to change a logged parameter: a resumed run adds only new ones.
    params = [self._entities.Param(k, str(v)[:MLFLOW_MAX_PARAM_LENGTH])
              for k, v in config_checks.flatten_config(hparams).items()
              if k not in self._logged_params]
    for start in range(0, len(params), MLFLOW_BATCH):
      self._client.log_batch(self.run_id, params=params[start:start + MLFLOW_BATCH])
    self._logged_params.update(p.key for p in params)

  def write_scalars(self, step: int, record: dict) -> None:
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        self._entities.Metric(tag, value, now, step) for tag, value in scalars(record).items()])

  def write_summary(self, summary: dict) -> None:
    self._client.log_dict(self.run_id, summary, run_files.SUMMARY_FILE)

  def write_artifact(self, path: str) -> None:
    self._client.log_artifact(self.run_id, path, run_files.PLOTS_DIR)

  def close(self, failed: bool = False) -> None:
    self._client.set_terminated(self.run_id, 'FAILED' if failed else 'FINISHED')


def check_reachable(uri: str, timeout_sec: float) -> None:
  """Raises ConnectionError when the http(s) server of `uri` accepts no connection within
  `timeout_sec` (other schemes, and servers reached through a proxy, are not checked)."""
  parts = urllib.parse.urlsplit(uri)
  if parts.scheme not in ('http', 'https') or not parts.hostname or (
      parts.scheme in urllib.request.getproxies()
      and not urllib.request.proxy_bypass(parts.hostname)):
    return
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout_sec).close()
  except OSError as e:
    raise ConnectionError(f'cannot connect to {uri} within {timeout_sec:g}s ({e})') from None


def _tag_dict(tags: Iterable[str]) -> dict[str, str]:
  return dict(t.split('=', 1) if '=' in t else (t, '') for t in tags)


class Trackers:
  """The enabled trackers of one run (or sweep trial) in `workdir`.

  `name` (a sweep's trial) defaults to `tracking.<service>.run_name`, else the workdir's name;
  a sweep's trials pass `group` (W&B's run group) and `tags`
  (MLflow's run tags). Every call goes to each open writer; a writer that raises is reported once
  (`failures`) and closed, the others go on. `tracking.json` keeps each tracked run's id and its
  last logged step.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, name: str = '',
               failures: Failures | None = None, group: str = '',
               tags: dict[str, str] | None = None):
    self.failures = failures or Failures(print)
    self._path = epath.Path(workdir) / TRACKING_FILE
    self._state = json.loads(self._path.read_text()) if self._path.exists() else {}
    self._writers = {}
    local = not run_files.is_remote(workdir)
    for service in SERVICES:
      settings = config.tracking[service]
      if not settings.enabled or service in self.failures.services:
        continue
      saved = self._state.get(service, {})
      run_name = name or settings.run_name or epath.Path(workdir).name
      try:
        if service == 'wandb':
          identity = {'project': settings.project, 'entity': settings.entity}
          run_id = saved.get('run_id') if saved.get('identity') == identity else None
          writer = WandbWriter(settings, run_name, run_id, workdir if local else None, group)
        else:
          run_id = saved.get('run_id') if self._same_mlflow(saved, settings) else None
          writer = MlflowWriter(settings, run_name, run_id, tags)
      except Exception as e:  # pylint: disable=broad-except
        self.failures.report(service, e)
        continue
      if writer.run_id != saved.get('run_id'):
        self._state[service] = {'run_id': writer.run_id, 'identity': writer.identity,
                                'last_step': 0}
      self._writers[service] = writer
    self._save()

  @staticmethod
  def _same_mlflow(saved: dict, settings) -> bool:
    identity = saved.get('identity', {})
    return (identity.get('experiment') == settings.experiment and
            (not settings.tracking_uri or identity.get('tracking_uri') == settings.tracking_uri))

  def _try(self, service: str, method: str, *args, **kwargs) -> bool:
    """Calls one writer; a failure is reported once and closes that writer for good."""
    writer = self._writers[service]
    try:
      getattr(writer, method)(*args, **kwargs)
      return True
    except Exception as e:  # pylint: disable=broad-except
      self.failures.report(service, e)
      del self._writers[service]
      try:
        writer.close(failed=True)
      except Exception:  # pylint: disable=broad-except
        pass
      return False

  def _call(self, method: str, *args, **kwargs) -> None:
    for service in list(self._writers):
      self._try(service, method, *args, **kwargs)

  def _save(self) -> None:
    if self._state:
      run_files.write_text_atomic(self._path, json.dumps(self._state, indent=2) + '\n')

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    """The resolved config (nested), as the tracked run's parameters."""
    self._call('write_hparams', hparams)

  def write_scalars(self, step: int, record: dict) -> None:
    """An epoch's scalars at `step`; skipped by a tracker that logged `step` already (a resumed
    run retrains, with identical results, the epochs after its checkpoint)."""
    logged = False
    for service in list(self._writers):
      if (step > self._state[service]['last_step'] and
          self._try(service, 'write_scalars', step, record)):
        self._state[service]['last_step'] = step
        logged = True
    if logged:
      self._save()

  def write_summary(self, summary: dict) -> None:
    self._call('write_summary', summary)

  def write_artifact(self, path: str) -> None:
    self._call('write_artifact', path)

  def close(self, failed: bool = False) -> None:
    self._call('close', failed=failed)
    self._writers = {}
