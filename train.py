"""Trains a ReID embedding model: P x K batches, CE + batch-hard triplet, jit-sharded step.

    python train.py --config=configs/mot17.py --workdir=runs/mot17 [--config.batch_size=128 ...]

Restarting with the same workdir resumes from the latest checkpoint. The input stream and the
augmentations are pure functions of (seed, step), so the step is the whole RNG state: a resumed
run sees exactly the batches an uninterrupted run would.
"""

import functools
import logging as std_logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax.training import train_state
from jax.experimental import multihost_utils
from ml_collections import config_flags

import checkpoints
import input_pipeline
import metrics
import models
import pretrained

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
    # optax scales from count == boundary on; counts restart at 0 after the warmup, which
    # check_run has made shorter than the first decay.
    boundaries = {}
    for epoch in s.decay_epochs:
      boundary = round(epoch * steps_per_epoch) - warmup
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
  images = models.normalize_images(batch['image'], models.DTYPES[config.model.dtype])
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
    params, batch_stats, _ = pretrained.load_pretrained(
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


# ---- Evaluation ----

def make_embed_fn(model: models.ReIDModel, mesh: jax.sharding.Mesh, *, normalize: bool,
                  flip_tta: bool = False) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
  """A jitted (variables, uint8 batch) -> float32 test embeddings, batch sharded over the mesh."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  def embed(variables, batch):
    return models.embed(model, variables, batch['image'], flip_tta=flip_tta, normalize=normalize)
  return jax.jit(embed, in_shardings=(replicated, data), out_shardings=data)


def embed_filelist(embed_fn: Callable, variables: Any, data: input_pipeline.FileList,
                   mesh: jax.sharding.Mesh, *, batch_size: int,
                   image_size: tuple[int, int]) -> np.ndarray:
  """Embeddings of every image of a filelist, in file order, gathered on every process."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batches = input_pipeline.eval_batches(
      data, batch_size=batch_size, image_size=image_size, process_index=jax.process_index(),
      process_count=jax.process_count())
  out = None
  for batch in input_pipeline.prefetch_to_mesh(batches, sharding):
    emb, index, mask = multihost_utils.process_allgather(
        (embed_fn(variables, batch), batch['index'], batch['mask']), tiled=True)
    if out is None:
      out = np.zeros((data.num_images, emb.shape[1]), np.float32)
    out[index[mask]] = emb[mask]
  return out


@functools.lru_cache(maxsize=4)
def _mesh_and_embed_fn(model: models.ReIDModel, normalize: bool, flip_tta: bool):
  """One mesh over all devices and its embed function, kept so repeated lists compile once."""
  mesh = create_mesh()
  return mesh, make_embed_fn(model, mesh, normalize=normalize, flip_tta=flip_tta)


def embed_images(config: ml_collections.ConfigDict, model: models.ReIDModel, variables: Any,
                 data: input_pipeline.FileList, *, flip_tta: bool = False,
                 normalize: bool | None = None) -> np.ndarray:
  """(N, D) test embeddings of a filelist with a loaded model, as training's evaluation.

  For evaluate.py and export.py: any device count; normalize None follows config.eval.normalize.
  """
  normalize = bool(config.eval.normalize) if normalize is None else normalize
  mesh, embed_fn = _mesh_and_embed_fn(model, normalize, flip_tta)
  # The training machine may have had another device count: round the batch up to fit this one.
  batch_size = -(-config.eval.batch_size // jax.device_count()) * jax.device_count()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return embed_filelist(embed_fn, jax.device_put(variables, replicated), data, mesh,
                              batch_size=batch_size, image_size=tuple(config.data.image_size))


def read_eval_lists(config: ml_collections.ConfigDict) -> dict[str, input_pipeline.FileList]:
  """{'query', 'gallery'} when config.data.query_list is set, else {'val'}, or {} for none."""
  image_root = os.path.join(config.data.root, config.data.image_dir)
  names = {'query': config.data.query_list, 'gallery': config.data.gallery_list}
  if not config.data.query_list:
    names = {'val': config.data.val_list} if config.data.val_list else {}
  lists = {name: input_pipeline.read_filelist(os.path.join(config.data.root, path), image_root)
           for name, path in names.items()}
  for name in ('query', 'gallery') if 'query' in lists else ():
    no_camera = metrics.market_cameras(lists[name].paths)[1]
    if no_camera is not None:
      logging.warning('%s has no <id>_c<camera> file name: query/gallery evaluation runs without '
                      "Market-1501's camera filter", no_camera)
      break
  return lists


def evaluate(embed_fn: Callable, variables: Any, lists: dict[str, input_pipeline.FileList],
             config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Val metrics: query/gallery with the camera filter, or MMDet's all-vs-all (+ frame gap)."""
  def embed(data):
    return embed_filelist(embed_fn, variables, data, mesh, batch_size=config.eval.batch_size,
                          image_size=tuple(config.data.image_size))
  if 'query' in lists:
    query, gallery = lists['query'], lists['gallery']
    scores, _ = metrics.query_gallery_metrics(embed(query), query.labels, query.paths,
                                              embed(gallery), gallery.labels, gallery.paths)
    return scores
  val = lists['val']
  embeddings = embed(val)
  scores = metrics.reid_metrics(embeddings, val.labels)
  if config.eval.frame_gap > 0:
    meta = metrics.path_metadata(val.paths)
    gap = metrics.reid_metrics(embeddings, val.labels, frames=meta['frame'],
                               sequences=meta['sequence'], frame_gap=config.eval.frame_gap)
    scores.update({f'gap_{k}': v for k, v in gap.items()})
  return scores


# ---- Start-up checks ----

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
  """Start-up checks that need no data, whose failure would otherwise surface inside jit."""
  for name in ('batch_size', 'data.k', 'eval.batch_size', 'log_every_steps',
               'checkpoint_every_steps', 'keep_checkpoints'):
    value = config
    for part in name.split('.'):
      value = value[part]
    if value < 1:
      raise ValueError(f'config.{name}={value} must be at least 1')
  if config.eval.every_steps < 0 or config.num_train_steps < 0 or config.seed < 0:
    raise ValueError('config.eval.every_steps, config.num_train_steps and config.seed must be '
                     '>= 0 (0: once per epoch / from num_epochs)')
  if config.batch_size % config.data.k:
    raise ValueError(f'config.batch_size={config.batch_size} is not a multiple of '
                     f'config.data.k={config.data.k}')
  p, hosts = config.batch_size // config.data.k, jax.process_count()
  if p % hosts:
    raise ValueError(f'P = config.batch_size / config.data.k = {p} identities per batch is not '
                     f'divisible by the {hosts} processes; change config.batch_size or data.k')
  n = jax.device_count()
  sizes = (('batch_size', config.batch_size), ('eval.batch_size', config.eval.batch_size))
  for name, size in sizes:
    if size % n:
      raise ValueError(f'config.{name}={size} is not divisible by the {n} devices')
  if bool(config.data.query_list) != bool(config.data.gallery_list):
    raise ValueError('config.data.query_list and config.data.gallery_list go together')
  augment = input_pipeline.Augment(**config.data.augment.to_dict())  # raises on bad values
  if augment.pad >= min(config.data.image_size):
    raise ValueError(f'config.data.augment.pad={augment.pad} must be smaller than '
                     f'config.data.image_size={tuple(config.data.image_size)}')


def check_run(config: ml_collections.ConfigDict, num_identities: int, epoch_steps: int,
              total_steps: int):
  """Start-up checks that need the training list's size: the schedule against the run's length."""
  p = config.batch_size // config.data.k
  if num_identities < p:
    logging.warning('%s has %d identities, fewer than P = config.batch_size / config.data.k = '
                    '%d: each batch repeats some (as MMDet\'s per-GPU samples do)',
                    config.data.train_list, num_identities, p)
  if total_steps < 1:
    raise ValueError(f'the run has {total_steps} steps ({config.num_epochs} epochs of '
                     f'{epoch_steps} steps); raise config.num_epochs or config.num_train_steps')
  warmup = warmup_steps(config, epoch_steps)
  if config.schedule.name == 'multistep' and config.schedule.decay_epochs:
    first = min(config.schedule.decay_epochs)
    if round(first * epoch_steps) <= warmup:
      raise ValueError(
          f'config.schedule.decay_epochs: the decay at epoch {first} (step '
          f'{round(first * epoch_steps)}, {epoch_steps} steps per epoch) falls inside the '
          f'{warmup}-step warmup; shorten config.schedule.warmup_steps/warmup_epochs or '
          'lengthen the epoch (config.epoch, config.batch_size)')


# ---- Main loop ----

def format_duration(seconds: float) -> str:
  """'1d 02:03:04' or '02:03:04'."""
  days, rest = divmod(int(seconds), 86400)
  text = time.strftime('%H:%M:%S', time.gmtime(rest))
  return f'{days}d {text}' if days else text


class Speedometer:
  """Training images/s between log lines, leaving out compilation and evaluation time."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.restart(0)

  def restart(self, step: int):
    self.time, self.step = time.perf_counter(), step

  def pause(self, seconds: float):
    self.time += seconds

  def images_per_sec(self, step: int) -> float | None:
    """Since the last restart, and restarts; None when no step completed since."""
    now, steps = time.perf_counter(), step - self.step
    rate = steps * self.batch_size / (now - self.time) if steps > 0 else None
    self.time, self.step = now, step
    return rate


def first_nonfinite(window: list[dict[str, jax.Array]], state: TrainState,
                    step: int) -> str | None:
  """What went non-finite in the steps of `window` (ending at `step`), or None.

  The loss and gradient norm say which step went wrong; the variables check catches an update
  or a BatchNorm statistic that overflowed while the loss stayed finite.
  """
  fetched = jax.device_get([(m['loss'], m['grad_norm']) for m in window])
  for i, (loss, norm) in enumerate(fetched):
    if not (np.isfinite(loss) and np.isfinite(norm)):
      return f'loss {loss}, gradient norm {norm} at step {step - len(window) + i + 1}'
  if not bool(all_finite(variables(state))):
    return f'parameters or BatchNorm statistics not finite after step {step}'
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (resuming from workdir when possible), evaluates, checkpoints; returns last metrics."""
  check_config(config)
  image_root = os.path.join(config.data.root, config.data.image_dir)
  train_data = input_pipeline.read_filelist(
      os.path.join(config.data.root, config.data.train_list), image_root)
  _, num_classes = input_pipeline.class_ids(train_data.labels, config.num_classes or None,
                                            source=train_data.source)
  eval_lists = read_eval_lists(config)
  epoch_steps = steps_per_epoch(config, num_classes, train_data.num_images)
  total_steps = config.num_train_steps or math.ceil(config.num_epochs * epoch_steps)
  check_run(config, num_classes, epoch_steps, total_steps)
  eval_every = config.eval.every_steps or epoch_steps
  schedule = create_learning_rate_schedule(config, epoch_steps, total_steps)
  logging.info('%d images, %d identities; %d steps of %d images, %d steps per epoch',
               train_data.num_images, num_classes, total_steps, config.batch_size, epoch_steps)
  if config.model.width == 64 and not config.model.init_from:  # a torchvision-sized ResNet
    logging.warning('config.model.init_from is empty: training ResNet-%d from random weights; '
                    "the recipe's numbers assume ImageNet weights (docs/training.md)",
                    config.model.depth)

  mesh = create_mesh()
  model = models.create_model(config.model, num_classes)
  state = create_train_state(config, model, create_optimizer(config, schedule), mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  p_train_step = jax.jit(functools.partial(train_step, config=config, schedule=schedule),
                         in_shardings=(replicated, data_sharding),
                         out_shardings=(replicated, replicated), donate_argnums=(0,))
  embed_fn = make_embed_fn(model, mesh, normalize=config.eval.normalize)

  os.makedirs(workdir, exist_ok=True)
  with checkpoints.checkpoint_manager(workdir, config.keep_checkpoints) as manager:
    state = checkpoints.restore_latest(manager, state, workdir)
    start_step = int(state.step)
    if jax.process_index() == 0:
      checkpoints.save_config(config, workdir, num_classes)
    writer = checkpoints.MetricWriter(workdir, start_step)
    batches = input_pipeline.train_batches(
        train_data, p=config.batch_size // config.data.k, k=config.data.k,
        image_size=tuple(config.data.image_size),
        augment=input_pipeline.Augment(**config.data.augment.to_dict()), seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), num_classes=config.num_classes or None)
    batches = input_pipeline.prefetch_to_mesh(batches, data_sharding)

    window: list[dict[str, jax.Array]] = []  # step metrics since the last log line
    val_metrics: dict[str, float] = {}
    speed = Speedometer(config.batch_size)
    for step in range(start_step + 1, total_steps + 1):
      state, step_metrics = p_train_step(state, next(batches))
      window.append(step_metrics)
      if step == start_step + 1:  # compilation and pipeline start-up stay out of images/s
        jax.block_until_ready(step_metrics)
        speed.restart(step)
      is_last = step == total_steps
      log_now = step % config.log_every_steps == 0 or is_last
      eval_now = bool(eval_lists) and (step % eval_every == 0 or is_last)
      save_now = step % config.checkpoint_every_steps == 0 or is_last or eval_now
      # Fetching syncs with the device, so the NaN guard runs only when logging or saving.
      if window and (log_now or save_now):
        problem = first_nonfinite(window, state, step)
        if problem:
          manager.wait_until_finished()
          last = manager.latest_step()
          where = f'step {last} in {manager.directory}' if last else 'none'
          raise FloatingPointError(f'{problem}; stopping. Last good checkpoint: {where}')
      if log_now:
        fetched = jax.device_get(window)
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        means['lr'] = float(fetched[-1]['lr'])  # the rate of this step, not a window average
        rate = speed.images_per_sec(step)
        eta = format_duration((total_steps - step) * config.batch_size / rate) if rate else '?'
        logging.info('step %d/%d epoch %.2f loss %.4f ce %.4f triplet %.4f acc %.3f lr %.3g '
                     '%.1f img/s ETA %s', step, total_steps, step / epoch_steps, means['loss'],
                     means['ce'], means['triplet'], means['accuracy'], means['lr'],
                     rate or math.nan, eta)
        speed_scalars = {'images_per_sec': rate} if rate else {}
        writer.write(step, 'train', dict(means, **speed_scalars, epoch=step / epoch_steps))
        window = []
      if eval_now:
        t_eval = time.perf_counter()
        val_metrics = evaluate(embed_fn, variables(state), eval_lists, config, mesh)
        logging.info('step %d val %s', step, metrics.format_metrics(val_metrics))
        writer.write(step, 'val', val_metrics)
        speed.pause(time.perf_counter() - t_eval)
      if save_now:
        manager.save(step, args=ocp.args.StandardSave(checkpoints.checkpoint_tree(state)),
                     metrics=val_metrics if eval_now else None, force=True)
    if start_step >= total_steps and eval_lists:
      logging.info('Already trained for %d steps; evaluating only', total_steps)
      val_metrics = evaluate(embed_fn, variables(state), eval_lists, config, mesh)
      logging.info('step %d val %s', start_step, metrics.format_metrics(val_metrics))
    writer.close()
  return val_metrics


def initialize_distributed():
  """jax.distributed.initialize() from flags, or from the cluster environment with --distributed."""
  if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a bad flag value or a mistyped config key is one `error:` line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')
  except (KeyError, AttributeError) as e:  # ml_collections: `--config.<key>` names no config key
    text = e.args[0].args[0] if isinstance(e.args[0], KeyError) else e.args[0]
    key, *rest = str(text).splitlines()
    hint = re.search(r'Did you mean "([^"]+)"', ' '.join(rest))
    sys.exit(f'error: unknown config key {key}' + (f" (did you mean '{hint[1]}'?)" if hint else ''))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required')
  if FLAGS.config is None:
    raise app.UsageError('--config is required, e.g. --config=configs/mot17.py')
  logging.get_absl_handler().addFilter(checkpoints.QuietLogs(std_logging.WARNING))
  initialize_distributed()
  if jax.process_index() > 0:  # one log for the whole job: process 0's
    logging.set_verbosity(logging.WARNING)
  logging.info('JAX %s: %d processes, %d devices (%s)', jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  try:
    scores = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error('%s', e)
    sys.exit(f'error: {e}')
  if scores and jax.process_index() == 0:
    print(f'final val {metrics.format_metrics(scores)}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
