"""A trained run, loaded back from its workdir: test metrics exactly as training computed them, per
class accuracy, the confusion matrix and the most confident mistakes."""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from mlp_mnist import data
from mlp_mnist import early_stopping
from mlp_mnist import epochs
from mlp_mnist import models
from mlp_mnist import steps
from mlp_mnist import train
from mlp_mnist.devices import parallel
from mlp_mnist.records import checkpointing
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs

PREDICT_BATCH = 1000


def dataset_info(workdir: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What the run in `workdir` trained on (`data.Dataset.info()`): its `dataset.json`, or, for a
  run written before that file existed, the dataset its config names, loaded."""
  info = run_files.read_dataset_info(workdir)
  if info is None:
    info = data.load_dataset(config.data).info()
  return {**info, 'image_shape': tuple(info['image_shape'])}


def load_run(workdir: str, step: int | str | None = None,
             devices: Sequence[jax.Device] | None = None
             ) -> tuple[ml_collections.ConfigDict, steps.TrainState, int, dict[str, Any]]:
  """Returns (config, train state replicated on `devices`, step, run record) of a checkpoint.

  `step` defaults to the latest checkpoint; 'best' is the best by the monitored metric. The
  checkpoint is opened read-only, so a training run still writing into `workdir` is not disturbed.
  The run record holds the checkpoint's `epoch` and `history`, and the run's `dataset`
  (`dataset_info`).
  """
  config = workdirs.load_config(workdir)
  info = dataset_info(workdir, config)
  devices = parallel.local_devices(devices)
  # The schedule's horizon does not change the state's structure, which is all a restore needs.
  target = parallel.replicate(steps.create_train_state(
      config, jax.random.PRNGKey(0), 1, info['image_shape'], info['num_classes']), devices)
  best = early_stopping.best_checkpoint_metric(config) if config.checkpoint.keep_best else None
  checkpoints = checkpointing.Checkpointer(workdir, read_only=True, best=best)
  try:
    if step == 'best' and best and best.metric.startswith('test_'):  # Recorded before the rule.
      raise checkpointing.CheckpointError(
          f'the best checkpoint of {workdir} was chosen by {best.metric}, on the test set; give a '
          f'--step of {", ".join(map(str, checkpoints.steps()))} instead.')
    state, step, run = restore_checked(checkpoints, target, step)
  finally:
    checkpoints.close()
  return config, state, step, {**run, 'dataset': info}


def restore_checked(checkpoints: checkpointing.Checkpointer, target, step: int | str | None):
  """`checkpoints.restore`, its failures sorted as training's restore sorts them (a mismatch with
  `config.json`, a storage error, damage) into one-line CheckpointErrors; nothing is moved."""
  available = checkpoints.steps()
  if step is None:
    resolved = available[-1] if available else None
  else:
    resolved = checkpoints.best_step() if step == 'best' else step
  retrain = ('evaluate another --step (the workdir has steps '
             f'{", ".join(map(str, available))}), or rerun the training command on this workdir, '
             'which sets a damaged checkpoint aside and resumes from the previous one')
  if resolved in available:
    try:
      differences = checkpoints.differences(target, resolved)
    except Exception as e:  # pylint: disable=broad-except
      raise _restore_error(checkpoints, resolved, e, retrain) from e
    if differences:
      raise checkpointing.CheckpointError(
          f'checkpoint {resolved} in {checkpoints.directory} does not match the run\'s '
          f'config.json or this code ({"; ".join(differences[:3])}): put back the config.json '
          'the run was trained with, or use the version of the code that wrote it.')
  try:
    return checkpoints.restore(target, step)
  except checkpointing.CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _restore_error(checkpoints, resolved, e, retrain) from e


def _restore_error(checkpoints, step, error: Exception, retrain: str):
  reason = ' '.join(f'{type(error).__name__}: {error}'.split())[:200]
  if checkpointing.is_storage_error(error):
    return checkpointing.CheckpointError(
        f'cannot read checkpoint {step} in {checkpoints.directory} ({reason}); free disk space, '
        'fix the permissions or wait for the storage to come back, then rerun.')
  return checkpointing.CheckpointError(
      f'checkpoint {step} in {checkpoints.directory} is damaged ({reason}); {retrain}.')


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model, params, images: jax.Array) -> jax.Array:
  return jax.nn.softmax(model.apply({'params': params}, images))


def predict_probabilities(config: ml_collections.ConfigDict, params, images: np.ndarray,
                          num_classes: int) -> np.ndarray:
  """Class probabilities [N, num_classes] for uint8 or [0, 255] float images of the run's input
  shape ([N, H, W] or [N, H, W, C])."""
  model = models.create_model(config.model, num_classes)
  params = jax.device_put(jax.device_get(params), jax.local_devices()[0])
  outputs = []
  for start in range(0, len(images), PREDICT_BATCH):
    batch = np.asarray(images[start:start + PREDICT_BATCH], np.float32) / 255.0
    padded = np.zeros((PREDICT_BATCH,) + batch.shape[1:], np.float32)
    padded[:len(batch)] = batch  # One batch shape: one compiled program.
    outputs.append(np.asarray(_probabilities(model, params, jnp.asarray(padded)))[:len(batch)])
  return np.concatenate(outputs) if outputs else np.zeros((0, num_classes), np.float32)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """Counts [true, predicted]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def most_confident_mistakes(labels: np.ndarray, probabilities: np.ndarray,
                            count: int) -> np.ndarray:
  """Indices of the wrong predictions with the highest predicted probability, highest first."""
  predictions = probabilities.argmax(1)
  wrong = np.flatnonzero(predictions != labels)
  confidence = probabilities[wrong, predictions[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:count]]


def evaluate_run(workdir: str, step: int | str | None = None, devices=None,
                 dataset: data.Dataset | None = None, num_mistakes: int = 24,
                 plots_dir: str | None = None) -> dict[str, Any]:
  """Evaluates checkpoint `step` (default: latest; 'best': the best) of the run in `workdir` on its test set.

  Test loss and accuracy come from the same pmapped `steps.evaluate` that training ran, so they
  equal what training reported for that step on the same devices. Writes `confusion_matrix.png`
  and `misclassified.png` into `plots_dir` (default: the workdir's `plots/`).
  """
  from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
  config, state, step, run = load_run(workdir, step, devices)
  devices = parallel.local_devices(devices)
  info = run['dataset']
  if dataset is None and info.get('source') == 'memory':
    raise data.DataError(
        f'{workdir} was trained on arrays given in memory ({info["name"] or "unnamed"}), not on '
        'the data its config names; give them: evaluation.evaluate_run(workdir, dataset=...) in '
        'Python, or scripts/evaluate.py --npz_path=FILE.npz.')
  if dataset is None:
    dataset = data.load_dataset(config.data)
  if (dataset.image_shape, dataset.num_classes) != (info['image_shape'], info['num_classes']):
    raise data.DataError(
        f'{workdir} was trained on {info["num_classes"]} classes of images {info["image_shape"]}, '
        f'but its config now reads {dataset.num_classes} classes of {dataset.image_shape}; '
        'point the config.json of the run back at its data.')
  images, labels = dataset.test
  trainer = train.Trainer(config, devices)
  test_data = parallel.replicate((images, labels), devices)
  test_indices = trainer.eval_indices(len(labels))
  trainer.compile_evaluation(state, test_data, test_indices)  # The program training ran.
  metrics = epochs.summarize_eval_metrics(trainer.evaluate(state, *test_data, test_indices))

  probabilities = predict_probabilities(config, state.params, images, dataset.num_classes)
  predictions = probabilities.argmax(1)
  matrix = confusion_matrix(labels, predictions, dataset.num_classes)
  mistakes = most_confident_mistakes(labels, probabilities, num_mistakes)
  epoch = run['epoch']
  reported = next((r for r in run['history'] if r['epoch'] == epoch), None)
  plots_dir = epath.Path(plots_dir or epath.Path(workdir) / run_files.PLOTS_DIR)
  title = f'{workdir}: step {step} (epoch {epoch}), test accuracy {metrics["test_accuracy"]:.2%}'
  paths, warnings = {}, []
  try:
    paths['confusion_matrix'] = plots.save_confusion_matrix(
        matrix, str(plots_dir / 'confusion_matrix.png'), title, info['class_names'])
    paths['misclassified'] = plots.save_misclassified(
        images[mistakes], labels[mistakes], predictions[mistakes],
        probabilities[mistakes, predictions[mistakes]], str(plots_dir / 'misclassified.png'),
        f'{title}\nmost confident of {len(np.flatnonzero(predictions != labels))} mistakes',
        info['class_names'])
  except OSError as e:  # A read-only or full workdir: the metrics are still worth printing.
    warnings.append(f'warning: cannot write the plots into {plots_dir} '
                    f'({e.strerror or type(e).__name__}); skipped them (make it writable or '
                    'free disk space to get them).')
  return {
      'workdir': str(workdir),
      'step': step,
      'epoch': epoch,
      'num_examples': int(len(labels)),
      **metrics,
      'per_class_accuracy': (np.diag(matrix) / np.maximum(matrix.sum(1), 1)).tolist(),
      'class_names': list(info['class_names']),
      'confusion_matrix': matrix.tolist(),
      'training_reported': run_files.without_timing(reported) if reported else None,
      'plots': paths,
      'warnings': warnings,
  }


def format_report(report: dict[str, Any]) -> str:
  """The evaluation as a few lines of text."""
  lines = [f"{report['workdir']}: step {report['step']} (epoch {report['epoch']}), "
           f"{report['num_examples']} test examples",
           f"test loss {report['test_loss']:.4f}  test accuracy {report['test_accuracy']:.2%}"]
  reported = report['training_reported']
  if reported:
    lines.append(f"training reported test loss {reported['test_loss']:.4f}  "
                 f"test accuracy {reported['test_accuracy']:.2%}")
  names = report.get('class_names') or []
  lines.append('per-class accuracy: ' + '  '.join(
      f'{names[c] if c < len(names) else c}: {a:.2%}'
      for c, a in enumerate(report['per_class_accuracy'])))
  lines.extend(f'wrote {path}' for path in report['plots'].values())
  return '\n'.join(lines)
