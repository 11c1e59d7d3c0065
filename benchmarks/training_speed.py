"""Side by side: this codebase, the Keras tutorial program, a naive JAX loop, and the roofline;
for the CNN (`model='cnn'`, configs/cnn.py's recipe), the same CNN in Keras and in PyTorch eager.

Each contender runs in its own process (`python -m benchmarks.training_speed --contender ...`), so its
end-to-end time includes Python start-up, imports, data loading and compilation, exactly as a user
would see it. Inside, each reports where its time went: `import_sec`, `data_sec`, `compile_sec`
(None where it cannot be separated from training), `train_sec` (the training epochs alone),
`eval_sec`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import roofline

CONTENDERS = ('mlp_mnist', 'keras', 'keras_silent', 'naive_jax')
CNN_CONTENDERS = ('mlp_mnist', 'keras', 'pytorch')
MODELS = ('mlp', 'cnn')
KERAS_BACKENDS = ('tensorflow', 'jax')
NAMES = {'mlp_mnist': 'mlp_mnist (scripts/train.py)', 'keras': 'Keras tutorial program',
         'pytorch': 'PyTorch eager',
         'keras_silent': 'Keras, fit(verbose=0)', 'naive_jax': 'naive JAX loop (jit per step)',
         'roofline': 'roofline (matmul peak)',
         'roofline_shapes': "roofline (the model's matmul shapes)"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_config(args):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict(dict(
      name='mnist', version='3.0.1', data_dir=args.data_dir, local_dir=args.local_dir,
      cache_dir=args.cache_dir, use_cache=True, download=True, npz_path=''))


def run_keras(args) -> dict[str, Any]:
  """The Keras MNIST tutorial program, fed the same uint8 arrays.

  `fit` prints its progress bar as the tutorial's does (verbose='auto'), except for the
  `keras_silent` contender (verbose=0). Keras runs on `args.keras_backend`: TensorFlow, as
  `tensorflow.keras` does, or JAX, where TensorFlow cannot be installed (a lent GPU machine).
  """
  start = time.perf_counter()
  os.environ['KERAS_BACKEND'] = args.keras_backend
  import keras  # pylint: disable=g-import-not-at-top
  if args.keras_backend == 'tensorflow':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    framework = f'TensorFlow {tf.__version__}, Keras {keras.__version__}'
  else:
    framework = f'Keras {keras.__version__} on {args.keras_backend}'
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  import_sec = time.perf_counter() - start

  start = time.perf_counter()
  dataset = data.load_dataset(_data_config(args))
  (x_train, y_train), (x_test, y_test) = dataset['train'], dataset['test']
  x_train, x_test = x_train / 255.0, x_test / 255.0
  data_sec = time.perf_counter() - start

  keras.utils.set_random_seed(args.seed)
  if args.model == 'cnn':
    model, optimizer = _keras_cnn(keras, len(y_train), args.batch_size, args.epochs)
    x_train, x_test = x_train[..., None], x_test[..., None]
  else:
    model, optimizer = keras.Sequential([
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation='relu'),
        keras.layers.Dense(10, activation='softmax'),
    ]), 'adam'
  model.compile(optimizer=optimizer, loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  start = time.perf_counter()
  verbose = 0 if args.contender == 'keras_silent' else 'auto'
  model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=verbose)
  train_sec = time.perf_counter() - start
  start = time.perf_counter()
  _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
  eval_sec = time.perf_counter() - start
  return dict(import_sec=import_sec, data_sec=data_sec, compile_sec=None, train_sec=train_sec,
              eval_sec=eval_sec, test_accuracy=float(test_accuracy), framework=framework,
              keras_backend=args.keras_backend, num_train=len(y_train))


def _keras_cnn(keras, num_train: int, batch_size: int, epochs: int):
  """configs/cnn.py's CNN and optimizer as a Keras user writes them."""
  layers = keras.layers
  model = keras.Sequential([
      keras.Input((28, 28, 1)),
      layers.Conv2D(16, 3, padding='same', activation='relu'),
      layers.MaxPooling2D(),
      layers.Conv2D(32, 3, padding='same', activation='relu'),
      layers.MaxPooling2D(),
      layers.Flatten(),
      layers.Dense(128, activation='relu'),
      layers.Dropout(0.25),
      layers.Dense(10, activation='softmax'),
  ])
  steps = -(-num_train // batch_size) * epochs
  warmup = round(0.3 * steps / epochs)
  schedule = keras.optimizers.schedules.CosineDecay(
      0.0, decay_steps=steps - warmup, warmup_target=3e-3, warmup_steps=warmup)
  return model, keras.optimizers.Adam(schedule)


def run_pytorch(args) -> dict[str, Any]:
  """configs/cnn.py's recipe as a PyTorch user writes it: eager mode, a DataLoader, Adam with
  linear warmup and cosine decay; on the GPU where there is one (each batch moved to it)."""
  start = time.perf_counter()
  import math  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.utils.data import DataLoader, TensorDataset  # pylint: disable=g-import-not-at-top
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  import_sec = time.perf_counter() - start

  start = time.perf_counter()
  dataset = data.load_dataset(_data_config(args))
  (x_train, y_train), (x_test, y_test) = dataset['train'], dataset['test']
  x_train = torch.tensor(x_train, dtype=torch.float32).div_(255).unsqueeze(1)
  x_test = torch.tensor(x_test, dtype=torch.float32).div_(255).unsqueeze(1)
  y_train, y_test = torch.tensor(y_train).long(), torch.tensor(y_test).long()
  data_sec = time.perf_counter() - start

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(args.seed)
  model = nn.Sequential(
      nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
      nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25),
      nn.Linear(128, 10)).to(device)
  loader = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
  optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
  steps = len(loader) * args.epochs
  warmup = round(0.3 * len(loader))
  scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (
      step / warmup if step < warmup
      else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))))
  start = time.perf_counter()
  for _ in range(args.epochs):
    model.train()
    for images, labels in loader:
      images, labels = images.to(device), labels.to(device)
      optimizer.zero_grad()
      loss = nn.functional.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      scheduler.step()
  loss.item()  # Waits for the GPU's queued work.
  train_sec = time.perf_counter() - start
  start = time.perf_counter()
  model.eval()
  with torch.no_grad():
    test_accuracy = (model(x_test.to(device)).argmax(1).cpu() == y_test).float().mean().item()
  eval_sec = time.perf_counter() - start
  return dict(import_sec=import_sec, data_sec=data_sec, compile_sec=None, train_sec=train_sec,
              eval_sec=eval_sec, test_accuracy=test_accuracy, num_train=len(y_train),
              framework=f'PyTorch {torch.__version__}, ' + (
                  torch.cuda.get_device_name() if device.type == 'cuda'
                  else f'{torch.get_num_threads()} threads'),
              layer_gflops=cnn_layer_gflops_torch(torch, args.batch_size, device))


def cnn_layer_gflops_torch(torch, batch_size: int, device='cpu',
                           seconds: float = 1.0) -> dict[str, float]:
  """GFLOP/s of each convolution of configs/cnn.py forward and backward in PyTorch on `device`."""
  rates = {}
  for name, (size, channels, features) in roofline.CNN_CONVOLUTIONS.items():
    conv = torch.nn.Conv2d(channels, features, 3, padding=1).to(device)
    images = torch.rand(batch_size, channels, size, size, device=device,
                        requires_grad=channels > 1)
    repeats, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
      conv(images).sum().backward()
      if repeats % 100 == 0:  # Keeps at most 100 calls queued on a GPU ahead of the clock.
        conv.weight.grad.sum().item()
      repeats += 1
      if start is None:
        repeats, start = 0, time.perf_counter()
    conv.weight.grad.sum().item()
    flops = roofline.conv_training_flops(size, channels, features) * batch_size * repeats
    rates[name] = flops / (time.perf_counter() - start) / 1e9
  return rates


def run_naive_jax(args) -> dict[str, Any]:
  """What most JAX tutorials and the Flax examples do: host-side batches, one jit call per step."""
  start = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax.training import train_state  # pylint: disable=g-import-not-at-top
  from mlp_mnist import data  # pylint: disable=g-import-not-at-top
  from mlp_mnist import models  # pylint: disable=g-import-not-at-top
  import_sec = time.perf_counter() - start

  start = time.perf_counter()
  dataset = data.load_dataset(_data_config(args))
  (x_train, y_train), (x_test, y_test) = dataset['train'], dataset['test']
  x_train = x_train.astype(np.float32) / 255.0
  x_test = x_test.astype(np.float32) / 255.0
  data_sec = time.perf_counter() - start

  model = models.MLP(num_classes=dataset.num_classes, hidden_sizes=(128,))
  params = model.init(jax.random.PRNGKey(args.seed),
                      jnp.zeros((1,) + dataset.image_shape))['params']
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=optax.adam(1e-3, eps=1e-7))

  @jax.jit
  def train_step(state, images, labels):
    def loss_fn(params):
      logits = state.apply_fn({'params': params}, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  @jax.jit
  def accuracy(params, images, labels):
    return jnp.mean(jnp.argmax(model.apply({'params': params}, images), -1) == labels)

  start = time.perf_counter()
  train_step = train_step.lower(state, x_train[:args.batch_size],
                                y_train[:args.batch_size]).compile()
  compile_sec = time.perf_counter() - start
  rng = np.random.default_rng(args.seed)
  steps = len(y_train) // args.batch_size  # Like the Flax example: the remainder is dropped.
  start = time.perf_counter()
  for _ in range(args.epochs):
    order = rng.permutation(len(y_train))[:steps * args.batch_size].reshape(steps, -1)
    losses = []
    for batch in order:
      state, loss = train_step(state, x_train[batch], y_train[batch])
      losses.append(loss)
    np.mean(jax.device_get(losses))
  train_sec = time.perf_counter() - start
  start = time.perf_counter()
  test_accuracy = float(accuracy(state.params, x_test, y_test))
  eval_sec = time.perf_counter() - start
  return dict(import_sec=import_sec, data_sec=data_sec, compile_sec=compile_sec,
              train_sec=train_sec, eval_sec=eval_sec, test_accuracy=test_accuracy,
              framework=jax.__version__, num_train=steps * args.batch_size)


def run_contender(args) -> dict[str, Any]:
  return {'keras': run_keras, 'keras_silent': run_keras, 'naive_jax': run_naive_jax,
          'pytorch': run_pytorch}[args.contender](args)


def _command(contender: str, workdir: str, batch_size: int, epochs: int, seed: int,
             data_dir: str, local_dir: str, cache_dir: str, jax_cache_dir: str,
             keras_backend: str = 'tensorflow', model: str = 'mlp') -> list[str]:
  if contender == 'mlp_mnist':  # The user's own command, nothing special.
    config = 'cnn.py' if model == 'cnn' else 'default.py'
    return [sys.executable, os.path.join(REPO, 'scripts', 'train.py'),
            f'--config={os.path.join(REPO, "configs", config)}',
            f'--config.batch_size={batch_size}', f'--config.num_epochs={epochs}',
            f'--config.seed={seed}', f'--config.data.data_dir={data_dir}',
            f'--config.data.local_dir={local_dir}', f'--config.data.cache_dir={cache_dir}',
            f'--workdir={workdir}', f'--jax_cache_dir={jax_cache_dir}']
  return [sys.executable, '-m', 'benchmarks.training_speed', f'--contender={contender}',
          f'--batch_size={batch_size}', f'--epochs={epochs}', f'--seed={seed}',
          f'--data_dir={data_dir}', f'--local_dir={local_dir}', f'--cache_dir={cache_dir}',
          f'--keras_backend={keras_backend}', f'--model={model}']


def run_in_process(contender: str, environ: dict[str, str] | None = None,
                   **kwargs) -> dict[str, Any]:
  """Runs one contender in a fresh process (its environment: `environ`, by default this one's
  with the repository on the path); adds its end-to-end wall time as `process_sec`."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    result = subprocess.run(_command(contender, workdir, **kwargs), capture_output=True,
                            text=True, check=False,
                            env=_with_repo_on_path(os.environ) if environ is None else environ)
    process_sec = time.perf_counter() - start
    record = {'contender': contender, 'batch_size': kwargs['batch_size']}
    if result.returncode:
      tail = (result.stderr.strip().splitlines() or ['no output'])[-1]
      return {**record, 'error': f'failed (exit {result.returncode}): {tail}'}
    if contender == 'mlp_mnist':
      with open(os.path.join(workdir, 'summary.json')) as f:
        summary = json.load(f)
      record.update(summary['timings'], test_accuracy=summary['test_accuracy'],
                    num_train=summary['num_train_examples'])
      with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        rates = [json.loads(line)['examples_per_sec'] for line in f][1:]
      if rates:  # The first epoch also pays the runtime's one-time start-up (~0.05-0.1 s on CPUs).
        record['later_examples_per_sec'] = len(rates) / sum(1 / r for r in rates)
    else:
      record.update(json.loads(result.stdout.strip().splitlines()[-1]))
  record['process_sec'] = process_sec
  return record


# JAX takes 75% of a GPU's memory up front in each process, and several JAX processes on one GPU
# that each do run out of memory (JAX's docs, "GPU memory allocation"). A benchmark that uses JAX
# itself and runs contenders in their own processes takes only what it uses.
PREALLOCATE = 'XLA_PYTHON_CLIENT_PREALLOCATE'


def leave_gpu_memory_to_child_processes() -> dict[str, str]:
  """Makes this process take GPU memory as it needs it (unless `PREALLOCATE` is set already) and
  returns the environment for its child processes: the one it was given, with the repository on
  the path, so each takes its memory as a user's run does. Call before this process uses JAX."""
  environ = _with_repo_on_path(os.environ)
  os.environ.setdefault(PREALLOCATE, 'false')
  return environ


def _with_repo_on_path(environ) -> dict[str, str]:
  path = [REPO] + [p for p in environ.get('PYTHONPATH', '').split(os.pathsep) if p]
  return {**environ, 'PYTHONPATH': os.pathsep.join(path)}


def run_benchmark(batch_sizes, epochs: int, seed: int = 0, data_dir: str = '',
                  local_dir: str = '', cache_dir: str = '', jax_cache_dir: str = '',
                  contenders=CONTENDERS, matmul_sizes=(512, 1024, 2048),
                  keras_backend: str = 'tensorflow', model: str = 'mlp', rounds: int = 1,
                  log=print) -> dict[str, Any]:
  """Every contender at every batch size, one process each, plus the roofline; `rounds` times,
  the contenders alternating, each process's record with the load average before it started."""
  environ = leave_gpu_memory_to_child_processes()
  gflops = roofline.measure_matmul_gflops(matmul_sizes)
  log(f'dense float32 matmul peak: {gflops:.1f} GFLOP/s')
  rows, layer_gflops = [], {}
  for batch_size in batch_sizes:
    for round_index in range(rounds):
      results = []
      for contender in contenders:  # mlp_mnist first: it also prepares the data and its cache.
        load = os.getloadavg()[0]
        results.append({**run_in_process(
            contender, environ, batch_size=batch_size, epochs=epochs, seed=seed, data_dir=data_dir,
            local_dir=local_dir, cache_dir=cache_dir, jax_cache_dir=jax_cache_dir,
            keras_backend=keras_backend, model=model), 'round': round_index, 'load': load})
        log(json.dumps(results[-1]))
      if model == 'cnn':
        shapes_gflops = None
        if round_index == 0:
          layer_gflops[batch_size] = roofline.measure_cnn_layer_gflops(batch_size)
          log(f'the convolutions at batch {batch_size}: {layer_gflops[batch_size]}')
      else:
        shapes_gflops = roofline.measure_training_matmul_gflops(batch_size)
        log(f'the training matmuls at batch {batch_size}: {shapes_gflops:.1f} GFLOP/s')
      rows += with_ratios(results, gflops, batch_size, epochs, shapes_gflops, model=model)
  return {'epochs': epochs, 'model': model, 'matmul_gflops': gflops, 'rows': rows,
          'layer_gflops': layer_gflops}


def with_ratios(results: list[dict], gflops: float, batch_size: int, epochs: int,
                shapes_gflops: float | None = None, model: str = 'mlp') -> list[dict]:
  """Adds examples/s, the roofline rows, and every figure as a ratio to mlp_mnist's.

  A roofline row is the time the epochs' matmul FLOPs take at a measured rate: the machine's peak
  (large square matmuls) and, when given, the rate of the step's own matmul shapes.
  """
  for r in results:
    if 'train_sec' in r:
      r['examples_per_sec'] = r['num_train'] * epochs / r['train_sec']
  per_example = (roofline.cnn_training_flops_per_example() if model == 'cnn'
                 else roofline.training_flops_per_example((128,)))
  flops = per_example * 60000 * epochs
  rates = {'roofline': gflops, 'roofline_shapes': shapes_gflops}
  rows = results + [
      {'contender': name, 'batch_size': batch_size, 'gflops': rate,
       'train_sec': flops / rate / 1e9, 'examples_per_sec': 60000 * epochs * rate * 1e9 / flops}
      for name, rate in rates.items() if rate]
  ours = next((r for r in results if r['contender'] == 'mlp_mnist' and 'train_sec' in r), None)
  for r in rows:
    for key in ('train_sec', 'examples_per_sec', 'process_sec'):
      if ours and r.get(key) is not None:
        r[f'{key}_vs_ours'] = r[key] / ours[key]
  return rows


def layer_table(result: dict[str, Any]) -> str:
  """Each convolution's GFLOP/s forward and backward, and its share of the matmul peak: mlp_mnist's
  CPU path and PyTorch's (measured in its process, after training), as a Markdown table."""
  peak = result['matmul_gflops']
  lines = ['| batch | layer | mlp_mnist GFLOP/s | share of peak | PyTorch GFLOP/s | share of peak |',
           '|---:|---|---:|---:|---:|---:|']
  for batch_size, ours in result.get('layer_gflops', {}).items():
    torch_rates = next((r['layer_gflops'] for r in result['rows'] if r['contender'] == 'pytorch'
                        and r['batch_size'] == int(batch_size) and 'layer_gflops' in r), {})
    for name, rate in ours.items():
      theirs = torch_rates.get(name)
      lines.append(f'| {batch_size} | {name} | {rate:.1f} | {rate / peak:.0%} | '
                   f'{_fmt(theirs, ".1f")} | {_fmt(theirs and theirs / peak, ".0%")} |')
  return '\n'.join(lines)


def roofline_shares(rows: list[dict]) -> str:
  """mlp_mnist's throughput as a share of each batch size's rooflines, as a Markdown table: over
  all epochs, and over the epochs after the first."""
  lines = ['| batch | mlp_mnist examples/s | after epoch 1 | roofline (matmul peak) | share | '
           'after epoch 1 | roofline (model shapes) | share | after epoch 1 |',
           '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for batch_size in sorted({r['batch_size'] for r in rows}):
    here = {r['contender']: r for r in rows if r['batch_size'] == batch_size}
    ours = here.get('mlp_mnist', {})
    if 'examples_per_sec' not in ours:
      continue
    rate, later = ours['examples_per_sec'], ours.get('later_examples_per_sec')
    cells = [f'{batch_size}', f'{rate:,.0f}', _fmt(later, ',.0f')]
    for name in ('roofline', 'roofline_shapes'):
      peak = here.get(name, {}).get('examples_per_sec')
      cells += [_fmt(peak, ',.0f'), _fmt(peak and rate / peak, '.0%'),
                _fmt(peak and later and later / peak, '.0%')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
  """The benchmark as a Markdown table; ratios are the row's figure over mlp_mnist's."""
  lines = ['| batch | contender | training s | ÷ ours | examples/s | ÷ ours | test acc | '
           'compile s | data s | end to end s | ÷ ours |',
           '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    name = NAMES[r['contender']]
    if r.get('keras_backend', 'tensorflow') != 'tensorflow':
      name += f" (Keras on {r['keras_backend']})"
    if 'load' in r:
      name += f" (load {r['load']:.1f})"
    if 'error' in r:
      lines.append(f"| {r['batch_size']} | {name} | {r['error']} |" + ' |' * 8)
      continue
    compile_sec = 'in fit' if r['contender'] == 'keras' else _fmt(r.get('compile_sec'), '.2f')
    lines.append(
        f"| {r['batch_size']} | {name} | {r['train_sec']:.2f} | "
        f"{_fmt(r.get('train_sec_vs_ours'), '.2f')} | {r['examples_per_sec']:,.0f} | "
        f"{_fmt(r.get('examples_per_sec_vs_ours'), '.3f')} | "
        f"{_fmt(r.get('test_accuracy'), '.2%')} | {compile_sec} | "
        f"{_fmt(r.get('data_sec'), '.2f')} | {_fmt(r.get('process_sec'), '.1f')} | "
        f"{_fmt(r.get('process_sec_vs_ours'), '.2f')} |")
  return '\n'.join(lines)


def main(argv=None):
  """Entry point of one contender's process: prints its result as one JSON line."""
  parser = argparse.ArgumentParser()
  parser.add_argument('--contender', choices=('keras', 'keras_silent', 'naive_jax', 'pytorch'),
                      required=True)
  parser.add_argument('--model', choices=MODELS, default='mlp')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--local_dir', default='')
  parser.add_argument('--cache_dir', default='')
  parser.add_argument('--keras_backend', choices=KERAS_BACKENDS, default='tensorflow')
  args = parser.parse_args(argv)
  result = run_contender(args)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
