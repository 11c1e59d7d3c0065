"""One process of a multi-process run, for tests/test_multiprocess.py (not a test itself).

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR NUM_TRAIN EPOCHS \
        [KEY=VALUE of config.checkpoint ...]

Two simulated CPU devices per process, synthetic data; the result goes to WORKDIR/result-ID.json.
PORT `auto` leaves the set-up to JAX's cluster detection (`--distributed=auto`, no other settings).
"""

import json
import os
import sys

process_id, num_processes, port, workdir, num_train, epochs = sys.argv[1:7]
checkpoint_overrides = sys.argv[7:]

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_num_cpu_devices', 2)

from mlp_mnist import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlp_mnist.devices import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position

if port == 'auto':
  assert distributed.initialize('auto', initialization_timeout_sec=60, heartbeat_timeout_sec=5)
else:
  distributed.initialize('on', f'localhost:{port}', int(num_processes), int(process_id),
                         initialization_timeout_sec=60, heartbeat_timeout_sec=5)
assert (jax.process_index(), jax.process_count()) == (int(process_id), int(num_processes))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'configs'))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position
from fake_data import synthetic_dataset  # pylint: disable=g-import-not-at-top,wrong-import-position
from mlp_mnist import train  # pylint: disable=g-import-not-at-top,wrong-import-position

config = default.get_config()
config.num_epochs = int(epochs)
config.eval_batch_size = 24
config.model.dropout_rate = 0.2
for override in checkpoint_overrides:
  key, value = override.split('=')
  config.checkpoint[key] = type(config.checkpoint[key])(value)
with cli.exit_on_user_error():
  result = train.train_and_evaluate(config, workdir,
                                    dataset=synthetic_dataset(int(num_train), 101))
with open(os.path.join(workdir, f'result-{process_id}.json'), 'w') as f:
  json.dump(result['history'], f)
