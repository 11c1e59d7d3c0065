"""Soak test: a small 3-epoch run killed with SIGKILL again and again, resumed each time.

`python -m benchmarks.soak` trains an uninterrupted reference run, then starts the same run in a
second workdir and kills it `--kills` times in a row. Each kill aims at a random epoch still to
train and picks its moment by mode (cycling through the modes, then at random):

- `startup`: a random moment from the start of the process until training starts (imports,
  data, restore, compilation), or as training starts;
- `training`: a random moment in the aimed epoch (from the line of the epoch before it);
- `checkpoint`: as soon as orbax's temporary directory of the aimed epoch's save appears
  (mid-write), else 0.2 s after that epoch's line;
- `records`: as soon as the aimed epoch's `metrics.jsonl` temporary file appears (mid-write), else
  at that epoch's line, after its metrics and before its checkpoint.

Every kill is followed by a resume of the same command; after the last kill the run finishes
uninterrupted. The final parameters and `metrics.jsonl` (timing fields aside) must equal the
reference bit for bit, and no checkpoint may have been set aside as damaged. Each training process
runs `child` below in its own Python (`python -m benchmarks.soak --child ...`).

`--sweep` soaks a sweep instead (`SWEEP`: two program groups of two trials, each trial resumed
from its own checkpoints): each start is killed, by mode (`SWEEP_MODES`, in turn), at a random
moment of an uninterrupted (warm) sweep's duration, or at the first checkpoint save or record
write of any trial after such a moment, then resumed (a sweep that finished between kills starts
over in a clean folder); at the end every trial's `metrics.jsonl` and final parameters must equal
the uninterrupted sweep's bit for bit, and every trial's status must say `done`. With
`--every_steps N`, the killed (and the warm) sweep also checkpoints every N steps inside epochs
(`checkpoint.every_steps`), while the reference does not: kills then land inside epochs too, and
the cadence must change no number.
"""

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('startup', 'training', 'checkpoint', 'records')
# The run: dropout and a warmup-cosine schedule, so a resume must restore the step and the key.
OVERRIDES = {'num_epochs': 3, 'model.hidden_sizes': (256,), 'model.dropout_rate': 0.2,
             'optimizer.schedule': 'warmup_cosine', 'optimizer.warmup_epochs': 1.0,
             'eval_batch_size': 500, 'logging.progress_bar': 'off'}
NUM_TRAIN, NUM_TEST = 32768, 1000  # 1024 steps per epoch.


# Two program groups (the hidden width) of two trials (the seed): kills land in either group, and
# a resume restores each trial from its own checkpoint.
SWEEP = ("def get_sweep(hyper):\n  return hyper.product([\n"
         "      hyper.sweep('model.hidden_sizes', [(256,), (128,)]),\n"
         "      hyper.sweep('seed', [0, 1])])\n")
SWEEP_OVERRIDES = {**OVERRIDES, 'num_epochs': 3}
SWEEP_NUM_TRAIN = 8192
SWEEP_MODES = ('random', 'checkpoint', 'records')


def synthetic_dataset(seed: int = 0):
  """Learnable fake MNIST: each class lights up its own band of rows."""
  from mlp_mnist.data import synthetic  # pylint: disable=g-import-not-at-top
  return synthetic.banded_digits(NUM_TRAIN, NUM_TEST, seed)


def child(workdir: str, result_path: str, cache_dir: str) -> None:
  """One training process: trains (resuming) in `workdir`; saves the final parameters."""
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import default  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mlp_mnist import cli  # pylint: disable=g-import-not-at-top
  from mlp_mnist import train  # pylint: disable=g-import-not-at-top
  cli.enable_compilation_cache(cache_dir)
  config = default.get_config()
  config.update_from_flattened_dict(OVERRIDES)
  with cli.exit_on_user_error():
    result = train.train_and_evaluate(config, workdir, dataset=synthetic_dataset(),
                                      log=lambda line: print(line, flush=True))
  leaves = jax.tree.leaves(jax.device_get(result['state']))
  np.savez(result_path, *leaves)


def sweep_child(workdir: str, result_path: str, cache_dir: str, every_steps: int = 0) -> None:
  """One sweep process: trains (resuming) the sweep in `workdir` (checkpoints every
  `every_steps` steps inside epochs); saves each trial's final parameters, read back from its
  final checkpoint."""
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import default  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mlp_mnist import cli  # pylint: disable=g-import-not-at-top
  from mlp_mnist import driver  # pylint: disable=g-import-not-at-top
  from mlp_mnist import epochs  # pylint: disable=g-import-not-at-top
  from mlp_mnist.data import synthetic  # pylint: disable=g-import-not-at-top
  from mlp_mnist.sweeps import results, runner, sweep_files, vectorized  # pylint: disable=g-import-not-at-top
  cli.enable_compilation_cache(cache_dir)
  config = default.get_config()
  config.update_from_flattened_dict(SWEEP_OVERRIDES)
  config.checkpoint.every_steps = every_steps
  sweep_path = os.path.join(os.path.dirname(workdir), 'sweep.py')
  with open(sweep_path, 'w') as f:
    f.write(SWEEP)
  dataset = synthetic.banded_digits(SWEEP_NUM_TRAIN, NUM_TEST, 0)
  with cli.exit_on_user_error():
    runner.run_sweep(config, sweep_path, workdir, dataset=dataset,
                     log=lambda line: print(line, flush=True))
  leaves = []
  for trial in sweep_files.sweep_trials(config, sweep_path):  # Trials of several programs.
    template = vectorized.init_trial_states(
        [trial.config], epochs.num_batches(SWEEP_NUM_TRAIN, config.batch_size),
        dataset['train'][0].shape[1:], 10)
    with contextlib.closing(driver.open_checkpointer(results.trial_dir(workdir, trial.name),
                                                     trial.config)) as saved:
      state, _, _ = saved.restore(jax.device_put(jax.tree.map(lambda x: x[0], template)))
    leaves += jax.tree.leaves(jax.device_get(state))
  np.savez(result_path, *leaves)


def _start(workdir: str, result_path: str, cache_dir: str, sweep: bool = False,
           every_steps: int = 0) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-m', 'benchmarks.soak', '--child', f'--workdir={workdir}',
       f'--result={result_path}', f'--cache_dir={cache_dir}'] + (['--sweep'] if sweep else [])
      + ([f'--every_steps={every_steps}'] if every_steps else []),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')})


def _lines(process: subprocess.Popen) -> 'queue.Queue[tuple[float, str | None]]':
  """The process's output lines as they come, with their arrival times (None at the end)."""
  lines = queue.Queue()

  def read():
    for line in process.stdout:
      lines.put((time.time(), line.rstrip('\n')))
    lines.put((time.time(), None))

  threading.Thread(target=read, daemon=True).start()
  return lines


def _writing(workdir: str) -> dict[str, bool]:
  """Whether a checkpoint save or a record write is in progress (their temporary names exist)."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:
    names = []
  try:
    records = os.listdir(workdir)
  except OSError:
    records = []
  return {'checkpoint': any('.orbax-checkpoint-tmp' in n for n in names),
          'records': any(n.startswith('.') and '.tmp-' in n for n in records)}


def _trials_writing(workdir: str) -> dict[str, bool]:
  """`_writing` of any trial folder of a sweep."""
  trials = os.path.join(workdir, 'trials')
  try:
    names = os.listdir(trials)
  except OSError:
    names = []
  found = [_writing(os.path.join(trials, n)) for n in names]
  return {mode: any(f[mode] for f in found) for mode in ('checkpoint', 'records')}


def _state(workdir: str) -> dict[str, Any]:
  """What a kill left: finished checkpoints, unfinished saves, epochs in metrics.jsonl."""
  try:
    names = os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:
    names = []
  epochs = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      epochs = [json.loads(line)['epoch'] for line in f if line.strip()]
  except (OSError, ValueError):
    epochs = ['damaged']
  return {'steps': sorted(int(n) for n in names if n.isdigit()),
          'unfinished_saves': sum('.orbax-checkpoint-tmp' in n for n in names),
          'metrics_epochs': epochs,
          'set_aside': os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints'))}


def _epoch_of(line: str) -> int | None:
  """The epoch of a log line `epoch   3  train loss ...`, else None."""
  parts = line.split()
  return int(parts[1]) if len(parts) > 1 and parts[0] == 'epoch' and parts[1].isdigit() else None


def kill_once(workdir: str, result_path: str, cache_dir: str, mode: str, rng: random.Random,
              startup_sec: float, epoch_sec: float) -> dict[str, Any]:
  """Starts the run and kills it as `mode` says, aiming at a random epoch still to train."""
  num_epochs = OVERRIDES['num_epochs']
  done = len(_state(workdir)['steps'])  # One checkpoint per epoch, all kept.
  if done >= num_epochs:
    mode = 'startup'  # Only the start of a finished run is left to cut.
  target = rng.randint(done + 1, num_epochs) if done < num_epochs else None
  start = time.time()
  process = _start(workdir, result_path, cache_dir)
  lines, output = _lines(process), []
  deadline = start + rng.uniform(0, startup_sec) if mode == 'startup' else float('inf')
  anchored, hit = False, None
  while process.poll() is None:
    try:
      when, line = lines.get_nowait()
    except queue.Empty:
      when, line = None, None
    if line is not None:
      output.append(line)
      epoch = _epoch_of(line)
      began = 'steps per epoch' in line
      if mode == 'startup' and began:
        hit = 'as training starts'
        break
      # Training and record-write kills aim inside epoch `target`; checkpoint kills at its save.
      if not anchored and (began and target == done + 1 or epoch == target - 1):
        if mode in ('training', 'records'):
          anchored = True
          deadline = when + rng.uniform(0, epoch_sec) if mode == 'training' else float('inf')
      if mode == 'records' and anchored and epoch == target:
        hit = 'after the epoch line, before its checkpoint'
        break
      if mode == 'checkpoint' and epoch == target:
        anchored = True
        deadline = when + 0.2  # The save starts right after this line.
    if mode in ('checkpoint', 'records') and anchored and _writing(workdir)[mode]:
      hit = f'{"checkpoint save" if mode == "checkpoint" else "metrics.jsonl write"} in progress'
      break
    if time.time() >= deadline:
      hit = 'at a random moment' if mode != 'checkpoint' else 'after the epoch line'
      break
    time.sleep(0.0002)
  killed = process.poll() is None
  if killed:
    process.send_signal(signal.SIGKILL)
  process.wait()
  process.stdout.close()
  return {'mode': mode, 'target_epoch': target, 'killed': killed,
          'when': hit if killed else 'finished first', 'after_sec': round(time.time() - start, 2),
          'returncode': process.returncode, **_state(workdir), 'output': output[-3:]}


def run_to_end(workdir: str, result_path: str, cache_dir: str, sweep: bool = False,
               every_steps: int = 0) -> tuple[float, float, list[str]]:
  """Runs uninterrupted; returns (seconds until training starts, seconds per epoch, output)."""
  start = time.time()
  process = _start(workdir, result_path, cache_dir, sweep, every_steps)
  lines, output, epoch_times = _lines(process), [], []
  began = None
  while True:
    when, line = lines.get()
    if line is None:
      break
    output.append(line)
    if 'steps per epoch' in line:
      began = when
    if line.startswith('epoch '):
      epoch_times.append(when)
  process.wait()
  process.stdout.close()
  if process.returncode != 0:
    raise RuntimeError(f'the run failed (exit {process.returncode}):\n' + '\n'.join(output))
  first = (began or time.time()) - start
  per_epoch = (np.diff(epoch_times).mean() if len(epoch_times) > 1 else 1.0)
  return first, float(per_epoch), output


def _metrics(workdir: str) -> list[dict]:
  sys.path.insert(0, REPO)
  from mlp_mnist.records import run_files  # pylint: disable=g-import-not-at-top
  return [run_files.without_timing(r) for r in run_files.read_metrics(workdir)]


def soak(root: str, kills: int, seed: int) -> dict[str, Any]:
  """The whole soak in `root`; returns the kill table and the verdicts."""
  rng = random.Random(seed)
  cache_dir = os.path.join(root, 'jax_cache')
  reference, resumed = os.path.join(root, 'reference'), os.path.join(root, 'killed')
  startup_sec, epoch_sec, _ = run_to_end(reference, os.path.join(root, 'reference.npz'),
                                         cache_dir)
  table = []
  for i in range(kills):
    mode = MODES[i % len(MODES)] if i < len(MODES) else rng.choice(MODES)
    table.append(kill_once(resumed, os.path.join(root, 'killed.npz'), cache_dir, mode, rng,
                           startup_sec, epoch_sec))
  _, _, output = run_to_end(resumed, os.path.join(root, 'killed.npz'), cache_dir)
  with np.load(os.path.join(root, 'reference.npz')) as a, np.load(
      os.path.join(root, 'killed.npz')) as b:
    same_params = len(a.files) == len(b.files) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a.files)
  same_metrics = _metrics(reference) == _metrics(resumed)
  return {'startup_sec': startup_sec, 'epoch_sec': epoch_sec, 'kills': table,
          'final_output': output[-2:], 'same_params': same_params,
          'same_metrics': same_metrics, 'set_aside': _state(resumed)['set_aside']}


def _same_arrays(path_a: str, path_b: str) -> bool:
  with np.load(path_a) as a, np.load(path_b) as b:
    return len(a.files) == len(b.files) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a.files)


def _trial_states(workdir: str) -> dict[str, str]:
  """Each trial folder's status (first line of `status`; '-' when it has none yet)."""
  trials = os.path.join(workdir, 'trials')
  names = sorted(os.listdir(trials)) if os.path.isdir(trials) else []
  states = {}
  for name in names:
    try:
      with open(os.path.join(trials, name, 'status')) as f:
        states[name] = f.readline().strip()
    except OSError:
      states[name] = '-'
  return states


def soak_sweep(root: str, kills: int, seed: int, every_steps: int = 0) -> dict[str, Any]:
  """The sweep soak in `root`: kills at random moments of the sweep (checkpointing every
  `every_steps` steps inside epochs), resumes, compares with a sweep without that cadence."""
  rng = random.Random(seed)
  cache_dir = os.path.join(root, 'jax_cache')
  reference, resumed = os.path.join(root, 'reference', 'run'), os.path.join(root, 'killed', 'run')
  warm = os.path.join(root, 'warm', 'run')  # Timed with the compilation cache filled.
  for directory in (reference, resumed, warm):
    os.makedirs(os.path.dirname(directory), exist_ok=True)
  run_to_end(reference, os.path.join(root, 'reference.npz'), cache_dir, sweep=True)
  if every_steps:  # Its calls inside epochs have lengths of their own to compile (and cache).
    run_to_end(warm + '_cold', os.path.join(root, 'warm.npz'), cache_dir, sweep=True,
               every_steps=every_steps)
  start = time.time()
  run_to_end(warm, os.path.join(root, 'warm.npz'), cache_dir, sweep=True, every_steps=every_steps)
  duration = time.time() - start
  table, cycles = [], 1
  for i in range(kills):
    if set(_trial_states(resumed).values()) == {'done'}:  # Finished between kills: start over.
      shutil.rmtree(resumed)
      cycles += 1
    mode = SWEEP_MODES[i % len(SWEEP_MODES)]
    delay = rng.uniform(0, duration)
    begun = time.time()
    process = _start(resumed, os.path.join(root, 'killed.npz'), cache_dir, sweep=True,
                     every_steps=every_steps)
    hit = 'at a random moment'
    while process.poll() is None:
      elapsed = time.time() - begun
      if mode == 'random' and elapsed >= delay:
        break
      if mode != 'random' and elapsed >= delay and _trials_writing(resumed)[mode]:
        hit = f'{"checkpoint save" if mode == "checkpoint" else "record write"} in progress'
        break
      time.sleep(0.0002 if mode != 'random' and elapsed >= delay else 0.01)
    killed = process.poll() is None
    if killed:
      process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    trials = os.path.join(resumed, 'trials')
    table.append({'mode': mode, 'killed': killed, 'when': hit if killed else 'finished first',
                  'after_sec': round(time.time() - begun, 2),
                  'statuses': _trial_states(resumed),
                  'epochs': {n: len(_metrics(os.path.join(trials, n)))
                             for n in _trial_states(resumed)
                             if os.path.exists(os.path.join(trials, n, 'metrics.jsonl'))}})
  _, _, output = run_to_end(resumed, os.path.join(root, 'killed.npz'), cache_dir, sweep=True,
                            every_steps=every_steps)
  names = sorted(_trial_states(reference))
  same_metrics = all(
      _metrics(os.path.join(reference, 'trials', n)) == _metrics(os.path.join(resumed, 'trials', n))
      for n in names)
  return {'duration_sec': duration, 'cycles': cycles, 'kills': table, 'final_output': output[-2:],
          'same_params': _same_arrays(os.path.join(root, 'reference.npz'),
                                      os.path.join(root, 'killed.npz')),
          'same_metrics': same_metrics, 'statuses': _trial_states(resumed),
          'set_aside': any(os.path.isdir(os.path.join(resumed, 'trials', n, 'corrupt_checkpoints'))
                           for n in names)}


def format_sweep_table(report: dict[str, Any]) -> str:
  """The sweep's kills as a Markdown table, then the verdicts."""
  rows = ['| # | mode | killed | after (s) | trial statuses left | epochs recorded |',
          '|---|---|---|---|---|---|']
  for i, k in enumerate(report['kills'], 1):
    rows.append(f'| {i} | {k["mode"]} | {k["when"]} | {k["after_sec"]} | '
                f'{", ".join(k["statuses"].values()) or "none"} | '
                f'{", ".join(map(str, k["epochs"].values())) or "none"} |')
  killed = sum(k['killed'] for k in report['kills'])
  rows.append('')
  rows.append(f'{killed} of {len(report["kills"])} sweep starts killed with SIGKILL (a warm '
              f'sweep takes {report["duration_sec"]:.1f} s; {report["cycles"]} sweep(s) from '
              f'scratch); final parameters of every trial bit for bit equal to the uninterrupted sweep: '
              f'{report["same_params"]}; metrics.jsonl equal (timing fields aside): '
              f'{report["same_metrics"]}; final statuses: '
              f'{", ".join(sorted(set(report["statuses"].values())))}; checkpoints set aside as '
              f'damaged: {report["set_aside"]}.')
  return '\n'.join(rows)


def format_table(report: dict[str, Any]) -> str:
  """The kills as a Markdown table, then the verdicts."""
  rows = ['| # | mode | aimed at epoch | killed | after (s) | checkpoints left (steps) | '
          'unfinished saves left | metrics.jsonl epochs |', '|---|---|---|---|---|---|---|---|']
  for i, k in enumerate(report['kills'], 1):
    rows.append(f'| {i} | {k["mode"]} | {k["target_epoch"] or "-"} | {k["when"]} | '
                f'{k["after_sec"]} | '
                f'{", ".join(map(str, k["steps"])) or "none"} | {k["unfinished_saves"]} | '
                f'{", ".join(map(str, k["metrics_epochs"])) or "none"} |')
  killed = sum(k['killed'] for k in report['kills'])
  rows.append('')
  rows.append(f'{killed} of {len(report["kills"])} starts killed with SIGKILL; final parameters '
              f'bit for bit equal to the uninterrupted run: {report["same_params"]}; '
              f'metrics.jsonl equal (timing fields aside): {report["same_metrics"]}; '
              f'checkpoints set aside as damaged: {report["set_aside"]}.')
  return '\n'.join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', required=False, help='Scratch directory (default: a new temp dir).')
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--json', help='Also write the report here.')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--workdir', help=argparse.SUPPRESS)
  parser.add_argument('--result', help=argparse.SUPPRESS)
  parser.add_argument('--cache_dir', help=argparse.SUPPRESS)
  parser.add_argument('--sweep', action='store_true',
                      help='Soak a sweep (kills at random moments, trials resumed) instead.')
  parser.add_argument('--every_steps', type=int, default=0,
                      help='With --sweep: the killed sweep also checkpoints every N steps inside '
                           'epochs (the reference does not).')
  args = parser.parse_args(argv)
  if args.every_steps < 0 or args.every_steps and not args.sweep:
    parser.error('--every_steps takes a non-negative number of steps, and --sweep.')
  if args.child:
    if args.sweep:
      sweep_child(args.workdir, args.result, args.cache_dir, args.every_steps)
    else:
      child(args.workdir, args.result, args.cache_dir)
    return 0
  import tempfile  # pylint: disable=g-import-not-at-top
  root = args.root or tempfile.mkdtemp(prefix='mlp_mnist_soak_')
  if args.sweep:
    report = soak_sweep(root, args.kills, args.seed, args.every_steps)
    print(format_sweep_table(report))
    if args.json:
      with open(args.json, 'w') as f:
        json.dump(report, f, indent=2)
    ok = (report['same_params'] and report['same_metrics'] and not report['set_aside']
          and set(report['statuses'].values()) == {'done'})
    return 0 if ok else 1
  report = soak(root, args.kills, args.seed)
  print(format_table(report))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
  ok = (report['same_params'] and report['same_metrics'] and not report['set_aside']
        and sum(k['killed'] for k in report['kills']) >= args.kills)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
