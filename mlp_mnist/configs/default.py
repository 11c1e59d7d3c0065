r"""The classic Keras MNIST tutorial recipe, reproduced exactly.

Flatten(28x28) -> Dense(128, relu) -> Dense(10, softmax) with Keras' Glorot-uniform initialization;
sparse categorical cross-entropy; Adam with Keras' defaults (lr 1e-3, beta1 0.9, beta2 0.999,
epsilon 1e-7, added to sqrt(v) before bias correction as Keras does); batch 32; 5 epochs; pixels
/ 255; training data reshuffled every epoch; evaluation on all 10,000 test images.

    python scripts/train.py --config configs/default.py --config.data.local_dir=/path/to/mnist_idx

Any value can be overridden, e.g. `--config.optimizer.learning_rate=3e-4
--config.model.hidden_sizes='(256,256)'`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Your own modules or .py files, imported before the config is checked: they register models,
  # losses, optimizers and augmentations by name (docs/extending.md).
  config.imports = ()
  config.seed = 0
  config.batch_size = 32
  config.num_epochs = 5
  config.eval_batch_size = 1000

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'  # A registered model: 'mlp', 'cnn' or yours (config.imports).
  config.model.dropout_rate = 0.0  # Every model's (a value in the train state).
  # The MLP's keys.
  config.model.hidden_sizes = (128,)
  config.model.activation = 'relu'
  # The CNN's keys (configs/cnn.py): conv blocks, then a dense layer before the logits.
  config.model.cnn = ml_collections.ConfigDict()
  config.model.cnn.features = (16, 32)  # Channels of each conv + 2x2 max-pool block.
  config.model.cnn.kernel_size = 3
  config.model.cnn.dense_width = 128  # 0: no hidden dense layer.
  config.model.cnn.activation = 'relu'

  # The float type of the model's computation ('float32', 'bfloat16'); parameters, optimizer
  # state and the loss stay float32.
  config.compute_dtype = 'float32'

  # The training loss (mlp_mnist/losses.py): 'cross_entropy', 'label_smoothing' (its key
  # loss.label_smoothing.smoothing), 'l2' (loss.l2.weight), or yours. Evaluation reports plain
  # cross-entropy whatever it is.
  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'cross_entropy'

  # Training-only augmentation on the device (mlp_mnist/augmentations.py): 'none',
  # 'random_shift' (augment.random_shift.max_shift pixels), 'random_flip', or yours.
  config.augment = ml_collections.ConfigDict()
  config.augment.name = 'none'

  config.optimizer = ml_collections.ConfigDict()
  # 'adam', 'adamw', 'sgd', 'rmsprop', or 'optax': any optax optimizer by name
  # (optimizer.optax.name = 'lion', optimizer.optax.kwargs = {'b1': 0.9}).
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-7
  config.optimizer.keras_epsilon = True  # Adam/AdamW: epsilon added before bias correction.
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.schedule = 'constant'
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.end_learning_rate_factor = 0.0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist'
  config.data.version = '3.0.1'
  config.data.data_dir = ''
  config.data.local_dir = ''
  config.data.cache_dir = ''
  config.data.use_cache = True
  config.data.download = True
  config.data.npz_path = ''  # Your own arrays instead of TFDS (docs/extending.md).
  # Training examples held out for validation: a count (10000) or a fraction in (0, 1); 0: none.
  config.data.validation_split = 0.0  # A float field, so the command line takes either.

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1  # 0: no checkpoints. The last epoch is always saved.
  config.checkpoint.keep = 3
  # Also inside epochs (result-neutral; resuming continues the epoch exactly): at every global
  # step that is a multiple of `every_steps`, and once `every_minutes` passed since the last save.
  config.checkpoint.every_steps = 0  # 0: off.
  config.checkpoint.every_minutes = 0.0  # 0: off.
  # Also keep the best checkpoint by the early-stopping monitor (when early stopping is off: the
  # validation loss; without a validation split, none); `scripts/evaluate.py --step best` reads it.
  config.checkpoint.keep_best = True

  # As Keras' EarlyStopping callback (mlp_mnist/early_stopping.py).
  config.early_stopping = ml_collections.ConfigDict()
  config.early_stopping.monitor = 'auto'  # 'auto': validation_loss with a validation split, else off.
  config.early_stopping.mode = 'auto'  # 'min', 'max'; 'auto': 'max' for accuracies, else 'min'.
  config.early_stopping.patience = 3  # Evaluated epochs without improvement before stopping.
  config.early_stopping.min_delta = 0.0
  config.early_stopping.restore_best_weights = False

  # Code run after each evaluated epoch (mlp_mnist/hooks.py): registered names such as
  # 'per_layer_weight_norms', or 'module:function' paths; their metrics join the epoch record.
  config.hooks = ()

  config.logging = ml_collections.ConfigDict()
  config.logging.log_every_epochs = 1
  config.logging.progress_bar = 'auto'  # 'auto': a bar when stdout is a terminal; 'on'; 'off'.
  config.logging.bar_updates_per_epoch = 20

  # A trace of a window of steps into workdir/profile/ (TensorBoard's profile plugin, Perfetto).
  config.profile = ml_collections.ConfigDict()
  config.profile.epoch = 0  # 0: no profile; else the epoch whose steps are traced.
  config.profile.start_step = 0  # The first traced step, counted from 0 at the epoch's start.
  config.profile.num_steps = 20

  # Experiment trackers, off unless enabled (pip install 'mlp_mnist[wandb]' / '[mlflow]').
  config.tracking = ml_collections.ConfigDict()
  config.tracking.wandb = ml_collections.ConfigDict()
  config.tracking.wandb.enabled = False
  config.tracking.wandb.project = 'mlp_mnist'
  config.tracking.wandb.entity = ''  # '': the account's default entity.
  config.tracking.wandb.run_name = ''  # '': the workdir's name.
  config.tracking.wandb.tags = ()
  config.tracking.wandb.mode = 'online'  # 'offline': local files only, `wandb sync` them later.
  config.tracking.mlflow = ml_collections.ConfigDict()
  config.tracking.mlflow.enabled = False
  config.tracking.mlflow.tracking_uri = ''  # '': MLflow's default (MLFLOW_TRACKING_URI).
  config.tracking.mlflow.experiment = 'mlp_mnist'
  config.tracking.mlflow.run_name = ''  # '': the workdir's name.
  config.tracking.mlflow.tags = ()  # 'key=value' or 'key' strings.
  return config
