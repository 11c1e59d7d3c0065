#!/usr/bin/env bash
# The GPU check (docs/benchmarks.md, "GPU"): one short run on a lent GPU machine that has JAX and
# PyTorch but no TensorFlow and no package index. From the repository root, with .whl/ (the
# missing wheels) and .mnist_cache/idx/ (the MNIST IDX files) beside it; results go to $OUT.
# Each stage has its own time limit and its output goes to $OUT/gpu_check.log; a stage that fails
# or runs out of time is reported and the next one runs. EPOCHS=1 makes it a rehearsal (any
# machine).
set -u
EPOCHS=${EPOCHS:-5}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
export PYTHONUNBUFFERED=1 HOME=/tmp/gpu_check_home  # A fresh HOME: no caches of any kind.
rm -rf "$HOME" /tmp/w_first /tmp/w_second  # And the runs of an earlier try on this machine.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
DATA=(--config.data.local_dir=.mnist_cache/idx --config.num_epochs=$EPOCHS)
BENCH=(--local_dir=.mnist_cache/idx --keras_backend=jax --epochs=$EPOCHS)

stage() {  # stage LIMIT_S NAME COMMAND...: runs COMMAND, logs it, prints its last lines.
  local limit=$1 name=$2 start=$SECONDS
  shift 2
  echo "=== $name" >>"$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s" >>"$LOG"
  grep -v -e Warning -e 'xla_bridge' -e '^I[0-9]' "$LOG" | sed -n '/^=== '"$name"'$/,$p' |
    tail -n 14
}

VERSIONS='import jax, flax, optax, orbax.checkpoint as ocp, torch, keras
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax",
      ocp.__version__, "torch", torch.__version__, "keras", keras.__version__, jax.devices())'
TRAIN="python3 scripts/train.py --config=configs/default.py ${DATA[*]}"
ACCURACY="grep -o '\"test_accuracy\": [0-9.]*'"

stage 30 versions bash -c "nvidia-smi -L; python3 -c '$VERSIONS'"
stage 60 'train.py, default recipe, first run' \
    bash -c "time $TRAIN --workdir=/tmp/w_first && $ACCURACY /tmp/w_first/summary.json"
stage 40 'train.py, default recipe, second run' \
    bash -c "time $TRAIN --workdir=/tmp/w_second && $ACCURACY /tmp/w_second/summary.json"
stage 50 'cnn_step: layers.ConvPool against flax.linen' \
    python3 -m benchmarks.cnn_step --part=flax_layers
stage 120 'benchmark, CNN' \
    python3 scripts/benchmark.py --model=cnn --batch_sizes=128 "${BENCH[@]}" \
    --out="$OUT/cnn_benchmark"
stage 120 'benchmark, MLP' \
    python3 scripts/benchmark.py --batch_sizes=32,1024 --contenders=mlp_mnist,keras,naive_jax \
    "${BENCH[@]}" --out="$OUT/mlp_benchmark"
stage 110 'sweep: vectorized against one at a time' \
    python3 scripts/benchmark_sweep.py --config=configs/default.py "${DATA[@]}" --nocommands
