"""Training and evaluation: pure steps, an epoch as `lax.scan`, and `train_and_evaluate`."""

import functools
import sys
import time
from typing import Any, Callable, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from mlp_mnist import checkpointing
from mlp_mnist import config_checks
from mlp_mnist import input_pipeline
from mlp_mnist import models
from mlp_mnist import optimizers
from mlp_mnist import parallel
from mlp_mnist import progress
from mlp_mnist import reporting
from mlp_mnist import run_records

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and the per-run values a step needs (a pytree; vmappable)."""
  dropout_rng: jax.Array
  dropout_rate: jax.Array
  lr_multiplier: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       steps_per_epoch: int) -> TrainState:
  """Initializes the model and optimizer described by `config`."""
  model = models.create_model(config.model)
  tx, lr_multiplier = optimizers.create_optimizer(config.optimizer, steps_per_epoch,
                                                  config.num_epochs)
  init_rng, dropout_rng = jax.random.split(rng)
  return TrainState.create(apply_fn=model.apply, params=_init_params(model, init_rng), tx=tx,
                           dropout_rng=dropout_rng,
                           dropout_rate=jnp.asarray(config.model.dropout_rate, jnp.float32),
                           lr_multiplier=lr_multiplier)


@functools.partial(jax.jit, static_argnums=0)
def _init_params(model: models.MLP, rng: jax.Array):
  # Jitted once per architecture: eager initialization compiles dozens of small programs.
  return model.init(rng, jnp.zeros((1,) + input_pipeline.IMAGE_SHAPE))['params']


def stack_trials(states: list[TrainState]) -> TrainState:
  """Stacks the states of trials that share one program along a new leading trial axis.

  The trials must differ only in values (parameters, seeds, injected hyperparameters, dropout
  rate), not in shapes or structure; the first state's model, optimizer and schedule serve all.
  """
  leaves = zip(*(jax.tree.leaves(s) for s in states))
  return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(x) for x in leaves])


def _sum_over_devices(tree, axis_name: str | None):
  # An axis of one device needs no sum; on a CPU the all-reduce would still cost a copy a step.
  if axis_name is None or jax.lax.axis_size(axis_name) == 1:
    return tree
  return jax.lax.psum(tree, axis_name)


def _loss_and_correct_sums(logits, labels, weights):
  # One-hot labels: the integer-label form's gradient is a scatter, several times slower on CPUs.
  losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(correct * weights)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, axis_name: str | None = None,
               norms: bool = True) -> tuple[TrainState, Metrics]:
  """One optimizer step on the global batch (this device's slice of it when `axis_name` is set).

  `batch` holds uint8 `image`, int `label`, bool `mask` (False for padding) and `index` (the
  example's dataset index: with `rng` it keys that example's dropout, so results do not depend on
  how the batch is split over devices). Returns summed metrics over the global batch, with the
  gradient and parameter norms when `norms` (they cost a third of a small step on CPU).
  """
  new_state, metrics, grads = _step_and_gradients(state, batch, rng, axis_name)
  if norms:
    metrics.update(grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(new_state.params))
  return new_state, metrics


def _step_and_gradients(state: TrainState, batch: Batch, rng: jax.Array,
                        axis_name: str | None) -> tuple[TrainState, Metrics, Any]:
  """`train_step` without norms, also returning the gradients summed over devices."""
  images = batch['image'].astype(jnp.float32) / 255.0
  weights = batch['mask'].astype(jnp.float32)
  count = _sum_over_devices(jnp.sum(weights), axis_name)
  example_rngs = jax.vmap(jax.random.fold_in, (None, 0))(rng, batch['index'])

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, state.dropout_rate, example_rngs)
    loss_sum, correct = _loss_and_correct_sums(logits, batch['label'], weights)
    # Normalized by the global count: the summed per-device gradients are exactly the gradient
    # of the global batch mean, also for a last batch whose padding leaves devices uneven.
    return loss_sum / jnp.maximum(count, 1.0), (loss_sum, correct)

  grads, (loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads, loss_sum, correct = _sum_over_devices((grads, loss_sum, correct), axis_name)
  learning_rate = state.opt_state.hyperparams['learning_rate'] * state.lr_multiplier(state.step)
  new_state = state.apply_gradients(grads=grads)
  metrics = {'loss_sum': loss_sum, 'correct': correct, 'count': count,
             'learning_rate': learning_rate}
  return new_state, metrics, grads


def eval_step(state: TrainState, batch: Batch, axis_name: str | None = None) -> Metrics:
  """Summed loss, correct predictions and example count; no gradients, no dropout."""
  images = batch['image'].astype(jnp.float32) / 255.0
  logits = state.apply_fn({'params': state.params}, images)
  loss_sum, correct = _loss_and_correct_sums(logits, batch['label'],
                                             batch['mask'].astype(jnp.float32))
  return _sum_over_devices(
      {'loss_sum': loss_sum, 'correct': correct, 'count': jnp.sum(batch['mask'], dtype=jnp.float32)},
      axis_name)


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array) -> Batch:
  """The batch at `indices` (-1 marks padding) from the on-device dataset arrays."""
  mask = indices >= 0
  safe = jnp.where(mask, indices, 0)
  # Rows of the flattened images: a 3-D gather runs about 3 times slower on CPUs.
  rows = images.reshape(images.shape[0], -1)[safe]
  return {'image': rows.reshape(safe.shape + images.shape[1:]), 'label': labels[safe],
          'mask': mask, 'index': safe}


def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array,
                batch_indices: jax.Array, axis_name: str | None = None):
  """Runs `train_step` over the rows of `batch_indices` [steps, batch] as one `lax.scan`.

  Dropout keys derive from the run's seed and the global step. Returns the state and the per-step
  metrics stacked along the first axis, with the gradient and parameter norms of the last step.
  Every step runs the same scanned program, so an epoch split over several calls gives the same
  numbers bit for bit.
  """

  def body(carry, indices):
    state, _ = carry
    state, metrics, grads = _step_and_gradients(
        state, gather_batch(images, labels, indices), step_rng(state), axis_name)
    return (state, grads), metrics

  no_grads = jax.tree.map(jnp.zeros_like, state.params)
  (state, last_grads), metrics = jax.lax.scan(body, (state, no_grads), batch_indices)
  return state, {**metrics, 'grad_norm': optax.tree.norm(last_grads),
                 'param_norm': optax.tree.norm(state.params)}


def step_rng(state: TrainState) -> jax.Array:
  """The dropout key of the step `state` is about to take: a function of (seed, step) only."""
  return jax.random.fold_in(state.dropout_rng, state.step)


def evaluate(state: TrainState, images: jax.Array, labels: jax.Array, batch_indices: jax.Array,
             axis_name: str | None = None) -> Metrics:
  """Summed `eval_step` metrics over the rows of `batch_indices` [steps, batch]."""

  def body(totals, indices):
    metrics = eval_step(state, gather_batch(images, labels, indices), axis_name)
    return jax.tree.map(jnp.add, totals, metrics), None

  zeros = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  return jax.lax.scan(body, jax.tree.map(jnp.float32, zeros), batch_indices)[0]


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The training order of `epoch`: a fresh shuffle each epoch, a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def summarize_train_metrics(step_metrics: Metrics) -> dict[str, float]:
  """Epoch averages from `train_epoch`'s metrics; norms and learning rate of the last step."""
  m = jax.tree.map(np.asarray, jax.device_get(step_metrics))
  return {
      'train_loss': float(m['loss_sum'].sum() / m['count'].sum()),
      'train_accuracy': float(m['correct'].sum() / m['count'].sum()),
      'grad_norm': float(m['grad_norm']),
      'param_norm': float(m['param_norm']),
      'learning_rate': float(m['learning_rate'][-1]),
  }


def summarize_eval_metrics(totals: Metrics, prefix: str = 'test') -> dict[str, float]:
  m = jax.device_get(totals)
  return {f'{prefix}_loss': float(m['loss_sum'] / m['count']),
          f'{prefix}_accuracy': float(m['correct'] / m['count'])}


def logs_epoch(config: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether `epoch` is evaluated and recorded: every `logging.log_every_epochs`, and the last."""
  return epoch % config.logging.log_every_epochs == 0 or epoch == config.num_epochs


def epoch_record(epoch: int, steps_per_epoch: int, step_metrics: Metrics, eval_totals: Metrics,
                 num_train: int, epoch_sec: float, start: float) -> dict[str, Any]:
  """One line of `metrics.jsonl` (`reporting.METRIC_KEYS` and the diagnostics)."""
  return {'epoch': epoch, 'step': epoch * steps_per_epoch,
          **summarize_train_metrics(step_metrics), **summarize_eval_metrics(eval_totals),
          'examples_per_sec': num_train / epoch_sec, 'elapsed_sec': time.time() - start}


class Trainer:
  """The pmapped training and evaluation functions for one config and set of devices.

  `train_steps` runs any number of steps in one call; an epoch may be split into several calls
  (for a progress bar) with identical results, each call shape compiled once.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices):
    self.config = config
    self.devices = devices
    self.num_devices = parallel.axis_size(devices)
    self.rows = parallel.process_rows(devices)
    axis = parallel.AXIS
    self.train_epoch = parallel.pmap(
        functools.partial(train_epoch, axis_name=axis), devices,
        in_axes=(None, None, None, 0), out_axes=(None, None), donate_argnums=(0,))
    self.evaluate = parallel.pmap(functools.partial(evaluate, axis_name=axis), devices,
                                  in_axes=(None, None, None, 0), out_axes=None)
    self._train_programs = {}

  def compile(self, state: TrainState, train_data, test_data, test_indices,
              steps_per_call: int | None = None) -> None:
    """Compiles ahead of time evaluation and training for every call shape of an epoch.

    Multi-process runs compile on the first call instead: pmap's ahead-of-time programs take
    global-shaped arguments there, while each process holds only its devices' slices.
    """
    if parallel.is_multiprocess():
      return
    epoch_indices = self.epoch_indices(1, len(train_data[1]))
    for chunk in split_steps(epoch_indices, steps_per_call):
      if chunk.shape[1] not in self._train_programs:
        self._train_programs[chunk.shape[1]] = compile_program(
            self.train_epoch.lower(state, *train_data, chunk), self.devices[0].platform,
            chunk.shape[2])
    self.compile_evaluation(state, test_data, test_indices)

  def compile_evaluation(self, state: TrainState, test_data, test_indices) -> None:
    """Compiles `evaluate` ahead of time, as `compile` does (not in multi-process runs)."""
    if not parallel.is_multiprocess():
      self.evaluate = compile_program(self.evaluate.lower(state, *test_data, test_indices),
                                      self.devices[0].platform, test_indices.shape[2])

  def train_steps(self, state: TrainState, images, labels, batch_indices: np.ndarray):
    """`train_epoch` over `batch_indices` [devices, steps, batch], compiled ahead when it can."""
    program = self._train_programs.get(batch_indices.shape[1], self.train_epoch)
    return program(state, images, labels, batch_indices)

  def epoch_indices(self, epoch: int, num_examples: int) -> np.ndarray:
    """This process's slices of epoch `epoch`'s global batches: [local devices, steps, batch]."""
    order = epoch_permutation(self.config.seed, epoch, num_examples)
    return parallel.shard_batch_indices(order, self.config.batch_size, self.num_devices)[self.rows]

  def eval_indices(self, num_examples: int) -> np.ndarray:
    return parallel.eval_batch_indices(num_examples, self.config.eval_batch_size,
                                       self.num_devices)[self.rows]


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


def split_steps(batch_indices: np.ndarray, steps_per_call: int | None) -> list[np.ndarray]:
  """Splits [devices, steps, batch] indices into calls of `steps_per_call` steps (None: one call)."""
  num_steps = batch_indices.shape[1]
  size = steps_per_call or num_steps
  return [batch_indices[:, i:i + size] for i in range(0, num_steps, size)]


def run_epoch(trainer: Trainer, state: TrainState, train_data, batch_indices: np.ndarray,
              steps_per_call: int | None = None, bar: progress.EpochBar | None = None):
  """Trains one epoch in calls of `steps_per_call` steps; returns the state and per-step metrics.

  Each call is dispatched before the previous call's metrics are fetched, so the device never
  waits for the host.
  """
  fetched, pending = [], None
  for chunk in split_steps(batch_indices, steps_per_call):
    state, metrics = trainer.train_steps(state, *train_data, chunk)
    if pending is not None:
      fetched.append(jax.device_get(pending))
      if bar:
        bar.update(fetched[-1])
    pending = metrics
  fetched.append(jax.device_get(pending))
  if bar:
    bar.update(fetched[-1])
    bar.close()
  # Per-step metrics are joined; per-call ones (the norms of a call's last step) taken from the last.
  join = lambda *calls: np.concatenate(calls) if np.ndim(calls[0]) else calls[-1]
  return state, jax.tree.map(join, *fetched)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       devices=None, dataset: input_pipeline.Dataset | None = None,
                       log: Callable[[str], Any] = print, restart: bool = False,
                       stream: TextIO | None = None) -> dict[str, Any]:
  """Trains `config` on the local devices, evaluating on the whole test set after each epoch.

  With a `workdir`, resumes from its latest checkpoint when it holds this same run (a different
  config is an error unless `restart`, which starts over), checkpoints every
  `config.checkpoint.every_epochs` and writes the run's records there (`run_records`). A progress
  bar goes to `stream` (default stdout) when `config.logging.progress_bar` asks for one. Returns
  the final `state`, the per-epoch records (`history`) and where the time went (`timings`).
  """
  start = time.time()
  devices = parallel.local_devices(devices)
  config_checks.validate_config(config, num_devices=parallel.axis_size(devices))
  lead = run_records.is_lead_process()
  log = log if lead else (lambda _: None)
  stream = stream or sys.stdout
  if workdir:
    run_records.prepare(workdir, config, restart)
  if dataset is None:
    dataset = input_pipeline.load_dataset(config.data)
  (train_images, train_labels), (test_images, test_labels) = dataset['train'], dataset['test']
  data_sec = time.time() - start
  num_train = len(train_labels)
  trainer = Trainer(config, devices)
  steps_per_epoch = -(-num_train // config.batch_size)
  show_bar = lead and progress.shows_bar(config.logging.progress_bar, stream)
  steps_per_call = (progress.steps_per_call(steps_per_epoch, config.logging.bar_updates_per_epoch)
                    if show_bar else None)

  state = create_train_state(config, jax.random.PRNGKey(config.seed), steps_per_epoch)
  state, train_data, test_data = parallel.replicate(
      (state, (train_images, train_labels), (test_images, test_labels)), devices)
  checkpoints, history, first_epoch, resumed_step = None, [], 1, None
  if workdir:
    checkpoints = checkpointing.Checkpointer(workdir, keep=config.checkpoint.keep)
    restored = checkpoints.restore_latest(state, warn=log)
    if restored:
      state, resumed_step, run = restored
      history, first_epoch = run['history'], run['epoch'] + 1
  recorder = run_records.RunRecorder(workdir, config, devices, history, resumed_step)
  test_indices = trainer.eval_indices(len(test_labels))
  compile_start = time.time()
  if first_epoch <= config.num_epochs:
    trainer.compile(state, train_data, test_data, test_indices, steps_per_call)
  timings = {'data_sec': data_sec, 'compile_sec': time.time() - compile_start,
             'train_sec': 0.0, 'eval_sec': 0.0}
  processes = f' in {jax.process_count()} processes' if parallel.is_multiprocess() else ''
  log(f'{num_train} training examples, {len(test_labels)} test examples, '
      f'{trainer.num_devices} {devices[0].platform} device(s){processes}, '
      f'{steps_per_epoch} steps per epoch; '
      f'data ready in {data_sec:.1f}s, compiled in {timings["compile_sec"]:.1f}s.')
  if resumed_step is not None:
    log(f'Resumed from the checkpoint at step {resumed_step} (epoch {first_epoch - 1}) in '
        f'{checkpoints.directory}.')

  for epoch in range(first_epoch, config.num_epochs + 1):
    epoch_start = time.time()
    if epoch == config.num_epochs:
      recorder.prepare_plots()  # The host is idle while the device trains.
    bar = (progress.EpochBar(stream, epoch, config.num_epochs, steps_per_epoch)
           if show_bar else None)
    state, step_metrics = run_epoch(trainer, state, train_data,
                                    trainer.epoch_indices(epoch, num_train), steps_per_call, bar)
    epoch_sec = time.time() - epoch_start
    timings['train_sec'] += epoch_sec
    if logs_epoch(config, epoch):
      eval_start = time.time()
      eval_totals = jax.device_get(trainer.evaluate(state, *test_data, test_indices))
      timings['eval_sec'] += time.time() - eval_start
      record = epoch_record(epoch, steps_per_epoch, step_metrics, eval_totals, num_train,
                            epoch_sec, start)
      history.append(record)
      recorder.write_epoch(record)
      log(reporting.format_epoch(record))
    every = config.checkpoint.every_epochs
    if checkpoints and every and (epoch % every == 0 or epoch == config.num_epochs):
      checkpoints.save(epoch * steps_per_epoch, state, epoch, history)
  if checkpoints:
    checkpoints.wait()
    checkpoints.close()
  recorder.plot_curves()
  timings['total_sec'] = time.time() - start
  recorder.finish({**history[-1], 'num_train_examples': num_train, 'timings': timings})
  if first_epoch > config.num_epochs:
    log(f'{workdir} already holds the final checkpoint of this run; nothing to train.')
  log(f'Final test accuracy: {history[-1]["test_accuracy"]:.2%} (training '
      f'{timings["train_sec"]:.1f}s, evaluation {timings["eval_sec"]:.1f}s, '
      f'total {timings["total_sec"]:.1f}s).')
  return {'state': state, 'history': history, 'timings': timings}
