"""Trains a ReID embedding model: P x K batches, CE + batch-hard triplet, jit-sharded step.

    python train.py --config=configs/mot17.py --workdir=runs/mot17 [--config.batch_size=128 ...]

Restarting with the same workdir resumes from the latest checkpoint. The input stream and the
augmentations are pure functions of (seed, step), so the step is the whole RNG state: a resumed
run sees exactly the batches an uninterrupted run would.
"""

import functools
import json
import logging as std_logging
import math
import os
import sys
import time
from typing import Any

# Quiet TensorFlow's C++ start-up chatter unless asked for; must precede its first import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorflow as tf
from absl import app, flags, logging
from flax.training import train_state
from ml_collections import config_flags

import evaluate
import input_pipeline
import models

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script: evaluate/export share names)."""
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, TensorBoard logs and metrics.')
  config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
  flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
  flags.DEFINE_bool('distributed', False,
                    'Multi-host with cluster auto-detection (SLURM, Open MPI, ...): calls '
                    'jax.distributed.initialize() without arguments.')


MMDET_IMAGES_PER_LINE = 32  # MMDet samples one P8 x K4 batch per training-list line.


# ---- Losses ----

def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Mean softmax cross-entropy with optional label smoothing."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def euclidean_distances(x: jax.Array) -> jax.Array:
  """All-pairs Euclidean distances, clamped like MMDet's TripletLoss (sqrt(max(d2, 1e-12)))."""
  sq = jnp.sum(x * x, axis=1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
  return jnp.sqrt(jnp.maximum(d2, 1e-12))


def batch_hard_triplet_loss(features: jax.Array, labels: jax.Array, margin: float = 0.3,
                            soft_margin: bool = False) -> jax.Array:
  """Batch-hard triplet loss (Hermans et al. 2017) over the whole (global) batch."""
  dist = euclidean_distances(features.astype(jnp.float32))
  same = labels[:, None] == labels[None, :]
  hardest_positive = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
  hardest_negative = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
  gap = hardest_positive - hardest_negative
  losses = jax.nn.softplus(gap) if soft_margin else jax.nn.relu(gap + margin)
  return losses.mean()


# ---- Optimizer and schedule ----

def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Warmup length in steps: warmup_steps plus warmup_epochs worth of steps."""
  s = config.schedule
  return int(s.warmup_steps + round(s.warmup_epochs * steps_per_epoch))


def create_learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                                  total_steps: int) -> optax.Schedule:
  """Linear warmup from lr * warmup_factor, then multi-step decay or cosine."""
  s, base = config.schedule, config.optimizer.lr
  warmup = warmup_steps(config, steps_per_epoch)
  if s.name == 'multistep':
    # optax scales from count == boundary on; counts restart at 0 after the warmup.
    boundaries = {}
    for epoch in s.decay_epochs:
      boundary = round(epoch * steps_per_epoch) - warmup
      if boundary <= 0:
        raise ValueError(f'decay epoch {epoch} falls inside the warmup ({warmup} steps)')
      boundaries[boundary] = boundaries.get(boundary, 1.0) * s.decay_factor
    main = optax.piecewise_constant_schedule(base, boundaries)
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(base, max(total_steps - warmup, 1))
  else:
    raise ValueError(f"config.schedule.name: unknown schedule '{s.name}' (multistep, cosine)")
  if warmup == 0:
    return main
  # MMEngine's LinearLR reaches the full rate on the last warmup step (total_iters = end - 1).
  ramp = optax.linear_schedule(base * s.warmup_factor, base, warmup - 1)
  return optax.join_schedules([ramp, main], [warmup])


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD/Adam with L2 added to the gradient as PyTorch does, or AdamW (decoupled)."""
  o = config.optimizer
  # BN scales/biases, dense biases and GeM's p are the parameters with ndim <= 1.
  mask = None if o.decay_bn_and_bias else (lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  if o.name == 'sgd':
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask),
                       optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
  if o.name == 'adam':
    return optax.chain(optax.add_decayed_weights(o.weight_decay, mask),
                       optax.adam(schedule, b1=o.b1, b2=o.b2))
  if o.name == 'adamw':
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=mask)
  raise ValueError(f"config.optimizer.name: unknown optimizer '{o.name}' (sgd, adam, adamw)")


# ---- Train state and steps ----

class TrainState(train_state.TrainState):
  batch_stats: Any


def train_step(state: TrainState, batch: dict[str, jax.Array], *, config: ml_collections.ConfigDict,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global P x K batch; returns the new state and scalar metrics."""
  images = input_pipeline.normalize_images(batch['image'],
                                           models.DTYPES[config.model.dtype])
  labels = batch['label']
  lc = config.loss

  def loss_fn(params):
    out, updates = state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, images,
                                  train=True, mutable=['batch_stats'])
    ce = cross_entropy_loss(out.logits, labels, lc.label_smoothing)
    triplet = batch_hard_triplet_loss(out.triplet_feature, labels, lc.triplet_margin,
                                      lc.triplet_soft_margin)
    loss = lc.ce_weight * ce + lc.triplet_weight * triplet
    accuracy = jnp.mean(jnp.argmax(out.logits, axis=-1) == labels)
    return loss, (updates['batch_stats'], {'ce': ce, 'triplet': triplet, 'accuracy': accuracy})

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = dict(metrics, loss=loss, lr=schedule(state.step), grad_norm=optax.global_norm(grads))
  return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def create_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """One data-parallel mesh over every device of every process (or the given devices)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def create_train_state(config: ml_collections.ConfigDict, model: models.ReIDModel,
                       tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
  """Random init (plus the pretrained backbone when config.model.init_from), replicated."""
  h, w = config.data.image_size
  # The 'rbg' key compiles much faster than threefry for a ResNet's worth of initializers.
  variables = jax.jit(model.init, static_argnames='train')(
      jax.random.key(config.seed, impl='rbg'), jnp.zeros((1, h, w, 3), jnp.float32), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  if config.model.init_from:
    params, batch_stats, _ = models.load_pretrained(
        jax.device_get(params), jax.device_get(batch_stats), config.model.init_from)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def create(params, batch_stats):
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats)
  return jax.jit(create, out_shardings=replicated)(params, batch_stats)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True when no leaf of `tree` holds a NaN or an Inf."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def variables(state: TrainState) -> dict[str, Any]:
  """The model variables of a train state."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


def checkpoint_tree(state: TrainState) -> dict[str, Any]:
  """The part of the state that goes into a checkpoint."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}


# ---- Logging ----

class MetricWriter:
  """TensorBoard scalars (tf.summary) and metrics.jsonl, written by process 0 only."""

  def __init__(self, workdir: str, start_step: int):
    self.active = jax.process_index() == 0
    if self.active:
      path = os.path.join(workdir, 'metrics.jsonl')
      _drop_lines_after(path, start_step)
      self._summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
      self._jsonl = open(path, 'a')

  def write(self, step: int, split: str, scalars: dict[str, float]):
    if not self.active:
      return
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(f'{split}/{name}', value)
    self._jsonl.write(json.dumps({'step': step, 'split': split, **scalars}) + '\n')
    self._jsonl.flush()
    self._summary.flush()

  def close(self):
    if self.active:
      self._summary.close()
      self._jsonl.close()


def _drop_lines_after(path: str, step: int):
  """Drops metrics.jsonl lines past `step`: a resumed run logs those steps again."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)['step'] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
      pass
  if len(kept) != len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)


def format_duration(seconds: float) -> str:
  """'1d 02:03:04' or '02:03:04'."""
  days, rest = divmod(int(seconds), 86400)
  text = time.strftime('%H:%M:%S', time.gmtime(rest))
  return f'{days}d {text}' if days else text


def format_metrics(metrics: dict[str, float]) -> str:
  """'mAP 61.2 R1 80.3 ...' for the log."""
  keys = ['mAP', 'R1', 'R5', 'R10', 'R20', 'mINP']
  text = ' '.join(f'{k} {100 * metrics[k]:.1f}' for k in keys if k in metrics)
  if 'gap_mAP' in metrics:
    text += ' | frame-gap: ' + ' '.join(f'{k} {100 * metrics["gap_" + k]:.1f}' for k in keys)
  return text


# ---- Main loop ----

def steps_per_epoch(config: ml_collections.ConfigDict, num_identities: int, num_lines: int) -> int:
  """Steps in one epoch, as config.epoch defines it."""
  p = config.batch_size // config.data.k
  if config.epoch == 'identities':
    return input_pipeline.steps_per_epoch(num_identities, p)
  if config.epoch == 'images':
    return math.ceil(num_lines / config.batch_size)
  if config.epoch == 'mmdet':
    return math.ceil(num_lines * MMDET_IMAGES_PER_LINE / config.batch_size)
  raise ValueError(f"config.epoch: unknown value '{config.epoch}' (identities, images, mmdet)")


def check_config(config: ml_collections.ConfigDict):
  """Start-up checks whose failure would otherwise surface deep inside jit or tf.data."""
  for name in ('batch_size', 'data.k', 'eval.batch_size', 'log_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints'):
    value = config
    for part in name.split('.'):
      value = value[part]
    if value < 1:
      raise ValueError(f'config.{name}={value} must be at least 1')
  if config.eval.every_steps < 0 or config.num_train_steps < 0:
    raise ValueError('config.eval.every_steps and config.num_train_steps must be >= 0 '
                     '(0: once per epoch / from num_epochs)')
  if config.batch_size % config.data.k:
    raise ValueError(f'config.batch_size={config.batch_size} is not a multiple of '
                     f'config.data.k={config.data.k}')
  n = jax.device_count()
  sizes = (('batch_size', config.batch_size), ('eval.batch_size', config.eval.batch_size))
  for name, size in sizes:
    if size % n:
      raise ValueError(f'config.{name}={size} is not divisible by the {n} devices')


def save_config(config: ml_collections.ConfigDict, workdir: str, num_classes: int):
  """Writes config.json (num_classes resolved) beside the checkpoints for evaluate/export."""
  path = os.path.join(workdir, 'config.json')
  saved = ml_collections.ConfigDict(config.to_dict())
  saved.num_classes = num_classes
  text = saved.to_json_best_effort(indent=2, sort_keys=True)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if old != text:
      logging.warning('%s differs from the current config; resuming with the current one', path)
      os.replace(path, path + '.previous')
  with open(path, 'w') as f:
    f.write(text)


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """'opt_state/1/0/mu/...' -> shape, for comparing a checkpoint's layout with a state's."""
  def name(key) -> str:
    return str(getattr(key, 'key', getattr(key, 'idx', getattr(key, 'name', key))))
  return {'/'.join(map(name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_latest(manager: ocp.CheckpointManager, state: TrainState,
                   workdir: str) -> TrainState:
  """The state of the latest checkpoint in `manager`, or `state` when there is none."""
  step = manager.latest_step()
  if step is None:
    return state
  # Compared before restoring: orbax's own mismatch error is many lines and leaves threads behind.
  stored = _shapes_by_path(manager.item_metadata(step))
  wanted = _shapes_by_path(checkpoint_tree(state))
  differences = [f'{path} is {stored.get(path, "absent")} in the checkpoint, '
                 f'{wanted.get(path, "absent")} in this config'
                 for path in sorted(set(stored) | set(wanted))
                 if stored.get(path) != wanted.get(path)]
  if differences:
    raise ValueError(
        f'{manager.directory}: cannot resume step {step} with this config ({len(differences)} '
        f'arrays differ, e.g. {differences[0]}); start a new --workdir or use the config the '
        f'run began with ({os.path.join(workdir, "config.json")})')
  restored = manager.restore(step, args=ocp.args.StandardRestore(checkpoint_tree(state)))
  logging.info('Resumed from step %d', step)
  return state.replace(**restored)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from workdir when possible), evaluates, checkpoints; returns last metrics."""
  check_config(config)
  root = config.data.root
  image_root = os.path.join(root, config.data.image_dir)
  train_data = input_pipeline.read_filelist(os.path.join(root, config.data.train_list), image_root)
  _, num_classes = input_pipeline.class_ids(train_data.labels, config.num_classes or None,
                                            source=train_data.source)
  val_data = None
  if config.data.val_list:
    val_data = input_pipeline.read_filelist(os.path.join(root, config.data.val_list), image_root)

  epoch_steps = steps_per_epoch(config, num_classes, train_data.num_images)
  total_steps = config.num_train_steps or math.ceil(config.num_epochs * epoch_steps)
  eval_every = config.eval.every_steps or epoch_steps
  schedule = create_learning_rate_schedule(config, epoch_steps, total_steps)
  logging.info('%d images, %d identities; %d steps of %d images, %d steps per epoch',
               train_data.num_images, num_classes, total_steps, config.batch_size, epoch_steps)

  mesh = create_mesh()
  model = models.create_model(config.model, num_classes)
  state = create_train_state(config, model, create_optimizer(config, schedule), mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  # Checkpoints: the latest k plus the best by val mAP.
  os.makedirs(workdir, exist_ok=True)
  options = ocp.CheckpointManagerOptions(
      best_fn=evaluate.checkpoint_score, best_mode='max',
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
          ocp.checkpoint_managers.LatestN(n=config.keep_checkpoints),
          ocp.checkpoint_managers.BestN(get_metric_fn=evaluate.checkpoint_score, n=1,
                                        keep_checkpoints_without_metrics=False)]),
      enable_async_checkpointing=True)
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  with ocp.CheckpointManager(directory, options=options,  # closed on any exit
                             item_handlers=ocp.StandardCheckpointHandler()) as manager:
    state = restore_latest(manager, state, workdir)
    if jax.process_index() == 0:
      save_config(config, workdir, num_classes)
    writer = MetricWriter(workdir, int(state.step))

    p_train_step = jax.jit(functools.partial(train_step, config=config, schedule=schedule),
                           in_shardings=(replicated, data_sharding),
                           out_shardings=(replicated, replicated), donate_argnums=(0,))
    embed_fn = evaluate.make_embed_fn(model, config, mesh)

    start_step = int(state.step)
    batches = input_pipeline.train_batches(
        train_data, p=config.batch_size // config.data.k, k=config.data.k,
        image_size=tuple(config.data.image_size),
        augment=input_pipeline.Augment(**config.data.augment.to_dict()), seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=config.num_classes or None)
    batches = input_pipeline.prefetch_to_mesh(batches, data_sharding)

    metrics_since_log: list[dict[str, jax.Array]] = []
    last_good_step = manager.latest_step()
    val_metrics: dict[str, float] = {}
    t_log, step_log = time.perf_counter(), start_step

    def check_finite(step: int):
      # Fetching syncs with the device, so it happens only when logging or saving. The loss and
      # gradient norm say which step went wrong; the variables check catches an update or a
      # BatchNorm statistic that overflowed while the loss stayed finite.
      fetched = jax.device_get([(m['loss'], m['grad_norm']) for m in metrics_since_log])
      finite = [bool(np.isfinite(loss) and np.isfinite(norm)) for loss, norm in fetched]
      problem = None
      if not all(finite):
        first = finite.index(False)
        loss, norm = fetched[first]
        problem = f'loss {loss}, gradient norm {norm} at step {step - len(finite) + first + 1}'
      elif not bool(all_finite(variables(state))):
        problem = f'parameters or BatchNorm statistics not finite after step {step}'
      if problem:
        manager.wait_until_finished()
        where = f'step {last_good_step} in {manager.directory}' if last_good_step else 'none'
        raise FloatingPointError(f'{problem}; stopping. Last good checkpoint: {where}')

    for step in range(start_step + 1, total_steps + 1):
      state, metrics = p_train_step(state, next(batches))
      metrics_since_log.append(metrics)
      if step == start_step + 1:  # keep compilation and pipeline start-up out of images/s
        jax.block_until_ready(metrics)
        t_log, step_log = time.perf_counter(), step
      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        check_finite(step)
        fetched = jax.device_get(metrics_since_log)
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        means['lr'] = float(fetched[-1]['lr'])  # the rate of this step, not a window average
        now = time.perf_counter()
        speed = {}  # none yet on the first step: it is the compilation
        if step > step_log:
          speed['images_per_sec'] = (step - step_log) * config.batch_size / (now - t_log)
        eta = (format_duration((total_steps - step) * config.batch_size / speed['images_per_sec'])
               if speed else '?')
        logging.info('step %d/%d epoch %.2f loss %.4f ce %.4f triplet %.4f acc %.3f lr %.3g '
                     '%.1f img/s ETA %s', step, total_steps, step / epoch_steps, means['loss'],
                     means['ce'], means['triplet'], means['accuracy'], means['lr'],
                     speed.get('images_per_sec', math.nan), eta)
        writer.write(step, 'train', dict(means, **speed, epoch=step / epoch_steps))
        metrics_since_log, t_log, step_log = [], now, step
      eval_now = val_data is not None and (step % eval_every == 0 or is_last)
      save_now = step % config.checkpoint_every_steps == 0 or is_last or eval_now
      if save_now and metrics_since_log:
        check_finite(step)
      if eval_now:
        t_eval = time.perf_counter()
        val_metrics = evaluate.evaluate_filelist(embed_fn, variables(state), val_data, config, mesh)
        logging.info('step %d val %s', step, format_metrics(val_metrics))
        writer.write(step, 'val', val_metrics)
        t_log += time.perf_counter() - t_eval  # keep evaluation out of the images/s figure
      if save_now:
        manager.save(step, args=ocp.args.StandardSave(checkpoint_tree(state)),
                     metrics=val_metrics if eval_now else None, force=True)
        last_good_step = step
    if start_step >= total_steps and val_data is not None:
      logging.info('Already trained for %d steps; evaluating only', total_steps)
      val_metrics = evaluate.evaluate_filelist(embed_fn, variables(state), val_data, config, mesh)
      logging.info('step %d val %s', start_step, format_metrics(val_metrics))
    writer.close()
  return val_metrics


def initialize_distributed():
  """jax.distributed.initialize() from flags, or from the cluster environment with --distributed."""
  if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/mot17.py')
  logging.get_absl_handler().addFilter(evaluate.QuietOrbax(std_logging.WARNING))
  initialize_distributed()
  if jax.process_index() > 0:  # one log for the whole job: process 0's
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: %d processes, %d devices (%s)', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    metrics = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  if metrics and jax.process_index() == 0:
    print(f'final val {format_metrics(metrics)}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
