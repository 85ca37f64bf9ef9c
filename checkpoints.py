"""The workdir, its only reader and writer: config, orbax checkpoints, metrics log, loading.

    <workdir>/config.json        the run's config with num_classes resolved (written at start-up)
    <workdir>/checkpoints/<step> orbax: step, params, batch_stats, opt_state; the latest k + best
    <workdir>/metrics.jsonl      one line per log or evaluation: {"step", "split", scalars...}
    <workdir>/tensorboard/       the same scalars for TensorBoard

train.py writes a workdir; evaluate.py and export.py read it through `load_checkpoint`.
"""

import json
import logging as std_logging
import math
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

import models

# ---- Files ----


def write_atomically(path: str, data: bytes, overwrite: bool = True) -> None:
  """Writes via a temporary file in the same folder: a crash never leaves half a file.

  Without overwrite, an existing `path` (even one that appeared meanwhile) is an error.
  """
  directory, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(directory, f'.{name}.{os.getpid()}.tmp')
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    if overwrite:
      os.replace(tmp, path)
      return
    try:
      os.link(tmp, path)  # atomic and fails if path exists, unlike a rename
    except FileExistsError:
      raise ValueError(f'{path}: exists (pass --overwrite to replace it)') from None
    except OSError:  # a file system without hard links
      if os.path.exists(path):
        raise ValueError(f'{path}: exists (pass --overwrite to replace it)') from None
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def save_config(config: ml_collections.ConfigDict, workdir: str, num_classes: int) -> None:
  """Writes config.json (num_classes resolved); a changed config keeps the old as .previous."""
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
  write_atomically(path, text.encode())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config train.py saved in workdir/config.json (num_classes resolved)."""
  if not os.path.isdir(workdir):
    raise ValueError(f'{workdir}: no such directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{path}: not found (is {workdir} a train.py workdir?)')
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  config.data.image_size = tuple(config.data.image_size)
  return config


# ---- Checkpoints ----


class QuietLogs(std_logging.Filter):
  """Drops orbax's records below `level` and JAX's start-up backend notices."""

  # Logged for every save without val metrics, i.e. every save between evaluations: expected.
  EXPECTED = 'did not provide metrics'

  def __init__(self, level: int = std_logging.ERROR):
    super().__init__()
    self.level = level

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.name == 'jax._src.xla_bridge':  # "Unable to initialize backend 'tpu'" (INFO)
      return record.levelno >= std_logging.WARNING
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    return record.levelno >= self.level and self.EXPECTED not in record.getMessage()


def checkpoint_score(metrics: dict[str, float]) -> float:
  """Val mAP, which picks the 'best' checkpoint; NaN (no query had a positive) ranks last."""
  value = metrics.get('mAP', math.nan)
  return value if value is not None and math.isfinite(value) else -math.inf


def checkpoint_manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  """The workdir's manager: keeps the latest `keep` plus the best by val mAP; None: read-only."""
  if keep is None:
    options = ocp.CheckpointManagerOptions(best_fn=checkpoint_score, best_mode='max',
                                           read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
        best_fn=checkpoint_score, best_mode='max',
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=checkpoint_score, n=1,
                                          keep_checkpoints_without_metrics=False)]),
        enable_async_checkpointing=True)
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def checkpoint_tree(state: Any) -> dict[str, Any]:
  """The part of a train state that goes into a checkpoint."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state}


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """'opt_state/1/0/mu/...' -> shape, for comparing a checkpoint's layout with a state's."""
  def name(key) -> str:
    return str(getattr(key, 'key', getattr(key, 'idx', getattr(key, 'name', key))))
  return {'/'.join(map(name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_latest(manager: ocp.CheckpointManager, state: Any, workdir: str) -> Any:
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


def load_checkpoint(workdir: str, checkpoint: str = 'best'
                    ) -> tuple[ml_collections.ConfigDict, models.ReIDModel, dict[str, Any], int]:
  """(config, model, host variables, step) of a workdir's 'best', 'latest' or numbered checkpoint.

  Works on any topology: the checkpoint is restored onto one device whatever wrote it.
  """
  config = load_config(workdir)
  checkpoint = str(checkpoint)  # the Python API also takes a step as an int
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise ValueError(f'{directory}: no checkpoints (has training saved one yet?)')
  with checkpoint_manager(workdir) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise ValueError(f'{directory}: no checkpoints')
    if checkpoint == 'latest':
      step = steps[-1]
    elif checkpoint == 'best':
      step = manager.best_step()  # the latest one when no evaluation was recorded
    elif checkpoint.isdigit() and int(checkpoint) in steps:
      step = int(checkpoint)
    else:
      raise ValueError(f'{directory}: no checkpoint {checkpoint!r} (have best, latest, '
                       f'{", ".join(map(str, steps))})')
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=device))
  model = models.create_model(config.model, config.num_classes)
  variables = jax.device_get({'params': tree['params'], 'batch_stats': tree['batch_stats']})
  return config, model, variables, step


# ---- Metrics log ----


class MetricWriter:
  """TensorBoard scalars (tf.summary) and metrics.jsonl, written by process 0 only."""

  def __init__(self, workdir: str, start_step: int):
    self.active = jax.process_index() == 0
    if self.active:
      # Imported here, not at the top: reading a workdir (evaluate, export) needs no TensorFlow.
      import tensorflow as tf

      path = os.path.join(workdir, 'metrics.jsonl')
      _drop_lines_after(path, start_step)
      self._summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))
      self._scalar = tf.summary.scalar
      self._jsonl = open(path, 'a')

  def write(self, step: int, split: str, scalars: dict[str, float]):
    if not self.active:
      return
    with self._summary.as_default(step=step):
      for name, value in scalars.items():
        self._scalar(f'{split}/{name}', value)
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
    write_atomically(path, ''.join(kept).encode())
