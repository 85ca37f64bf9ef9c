"""Tests for train.py: losses, schedule, the sharded step, resume, multi-host and a tiny run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import metrics
import models
import train
from configs import default, mot17

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_root: str = ''):
  """A ResNet-18 of width 8 on 32x16 crops: compiles and steps in seconds on a CPU."""
  config = default.get_config()
  config.data.root = data_root
  config.data.image_size = (32, 16)
  config.batch_size = 16
  config.model.depth = 18
  config.model.width = 8
  config.model.head = 'bnneck'
  config.optimizer.name = 'adam'
  config.optimizer.lr = 1e-3
  config.schedule.warmup_steps = 0
  config.schedule.warmup_epochs = 0
  config.schedule.decay_epochs = ()
  config.eval.batch_size = 32
  return config


def tiny_flags(data_root: str, **overrides) -> list[str]:
  """Command-line overrides giving tiny_config() on top of configs/synthetic.py."""
  values = {'data.root': data_root, 'data.image_size': '(32,16)', 'batch_size': 16,
            'model.depth': 18, 'model.width': 8,
            'eval.batch_size': 32, 'log_every_steps': 1, **overrides}
  return [f'--config.{k}={v}' for k, v in values.items()]


def run_train(workdir, data_root, extra_env=None, **overrides):
  """Starts train.py in a subprocess with the tiny overrides."""
  cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/synthetic.py',
         f'--workdir={workdir}', *tiny_flags(data_root, **overrides)]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', **(extra_env or {}))
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def final_params(workdir: str):
  """The parameters of the latest checkpoint in workdir, as NumPy."""
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'))
  step = manager.latest_step()
  # The checkpoint may come from another topology (2 processes): restore onto one device.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  tree = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=device))
  manager.close()
  return step, tree['params']


def assert_trees_close(a, b, atol):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


# ---- Losses ----

def test_batch_hard_triplet_loss_by_hand():
  # Points on a line; labels 0,0,1,1. Hardest positive/negative gaps: -2, -1, 0, -2.
  x = jnp.array([[0.0, 0], [1, 0], [3, 0], [5, 0]])
  labels = jnp.array([0, 0, 1, 1])
  # Only anchor 2 violates the margin: relu(2 - 2 + 0.3) = 0.3, mean over 4 anchors.
  np.testing.assert_allclose(train.batch_hard_triplet_loss(x, labels, 0.3), 0.075, rtol=1e-5)
  soft = (2 * np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)) + np.log(2.0)) / 4
  np.testing.assert_allclose(
      train.batch_hard_triplet_loss(x, labels, soft_margin=True), soft, rtol=1e-5)


def test_cross_entropy_with_label_smoothing_by_hand():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
  labels = jnp.array([0, 2])
  log_p = np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
  plain = -(log_p[0, 0] + log_p[1, 2]) / 2
  np.testing.assert_allclose(train.cross_entropy_loss(logits, labels), plain, rtol=1e-6)
  eps = 0.1
  targets = np.full((2, 3), eps / 3)
  targets[0, 0] += 1 - eps
  targets[1, 2] += 1 - eps
  smooth = -(targets * log_p).sum(1).mean()
  np.testing.assert_allclose(train.cross_entropy_loss(logits, labels, eps), smooth, rtol=1e-6)


# ---- Schedule and optimizer ----

def test_mmdet_schedule_warmup_and_decay():
  config = mot17.get_config()  # lr 0.1, 1000 warmup steps from x1e-3, x0.1 at epoch 5
  schedule = train.create_learning_rate_schedule(config, steps_per_epoch=300, total_steps=1800)
  # MMEngine's LinearLR(start_factor=1e-3, end=1000): linear from step 0 to 999 inclusive.
  np.testing.assert_allclose(schedule(0), 1e-4, rtol=1e-4)
  np.testing.assert_allclose(schedule(500), 0.1 * (1e-3 + (1 - 1e-3) * 500 / 999), rtol=1e-4)
  np.testing.assert_allclose(schedule(998), 0.1 * (1e-3 + (1 - 1e-3) * 998 / 999), rtol=1e-4)
  np.testing.assert_allclose(schedule(999), 0.1, rtol=1e-4)
  np.testing.assert_allclose(schedule(1000), 0.1, rtol=1e-4)
  np.testing.assert_allclose(schedule(1499), 0.1, rtol=1e-4)  # last step of epoch 4
  np.testing.assert_allclose(schedule(1500), 0.01, rtol=1e-4)  # first step of epoch 5
  np.testing.assert_allclose(schedule(1799), 0.01, rtol=1e-4)


def test_mmdet_epoch_is_one_32_image_sample_per_line():
  config = mot17.get_config()
  assert train.steps_per_epoch(config, num_identities=300, num_lines=8000) == 1000
  config.batch_size = 128
  assert train.steps_per_epoch(config, num_identities=300, num_lines=8000) == 2000
  config.epoch = 'identities'  # P = 32: every identity once
  assert train.steps_per_epoch(config, num_identities=300, num_lines=8000) == 10
  config.epoch = 'images'  # BoT: every image once
  assert train.steps_per_epoch(config, num_identities=300, num_lines=8000) == 63
  config.epoch = 'frames'
  with pytest.raises(ValueError, match="config.epoch: unknown value 'frames'"):
    train.steps_per_epoch(config, num_identities=300, num_lines=8000)


@pytest.mark.parametrize('key, value', [('log_every_steps', 0), ('checkpoint_every_steps', 0),
                                        ('keep_checkpoints', 0), ('data.k', 0),
                                        ('batch_size', 30),  # not a multiple of K = 4
                                        ('eval.batch_size', 30),  # nor of the 4 devices
                                        ('seed', -1), ('data.augment.pad', 16)])
def test_check_config_rejects_values_that_would_fail_later(key, value):
  config = tiny_config()  # 32x16 images: a pad of 16 leaves nothing to crop
  section, _, name = key.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=f'config.{key.split(".")[-1]}|config.{key}'):
    train.check_config(config)


def test_check_config_needs_p_divisible_by_the_processes(monkeypatch):
  config = tiny_config()  # P = 16 / 4 = 4
  monkeypatch.setattr(jax, 'process_count', lambda: 3)
  with pytest.raises(ValueError, match=r'P = config.batch_size / config.data.k = 4 .* 3 processes'):
    train.check_config(config)
  config.data.augment.erasing_prob = 1.5  # the augment settings are checked here too
  monkeypatch.setattr(jax, 'process_count', lambda: 1)
  with pytest.raises(ValueError, match='erasing_prob must be in'):
    train.check_config(config)


def test_log_helpers():
  assert train.format_duration(3725) == '01:02:05'
  assert train.format_duration(90000) == '1d 01:00:00'  # not wrapped at 24 h


def test_cosine_schedule_and_decay_mask():
  config = tiny_config()
  config.optimizer.lr = 0.05
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 10
  config.schedule.warmup_factor = 0.1
  schedule = train.create_learning_rate_schedule(config, steps_per_epoch=10, total_steps=110)
  np.testing.assert_allclose(schedule(0), 0.005, rtol=1e-6)
  np.testing.assert_allclose(schedule(10), 0.05, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), 0.025, rtol=1e-5)
  # decay_bn_and_bias=False: vectors (BN, biases) get no weight decay, kernels do.
  config.optimizer.decay_bn_and_bias = False
  config.optimizer.name = 'sgd'
  config.optimizer.lr = 1.0
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 0.5
  tx = train.create_optimizer(config, optax.constant_schedule(1.0))
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)


# ---- The sharded step ----

def random_batch(config, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  h, w = config.data.image_size
  p = config.batch_size // config.data.k
  labels = np.repeat(rng.choice(num_classes, p, replace=False), config.data.k).astype(np.int32)
  images = rng.integers(0, 256, (config.batch_size, h, w, 3), dtype=np.uint8)
  return {'image': images, 'label': labels}


def run_steps(config, mesh, batch, num_steps, num_classes):
  schedule = optax.constant_schedule(config.optimizer.lr)
  model = models.create_model(config.model, num_classes)
  state = train.create_train_state(config, model, train.create_optimizer(config, schedule), mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  step = jax.jit(lambda s, b: train.train_step(s, b, config=config, schedule=schedule),
                 in_shardings=(replicated, data), out_shardings=(replicated, replicated),
                 donate_argnums=(0,))
  batch = jax.device_put(batch, data)
  losses = []
  for _ in range(num_steps):
    state, step_metrics = step(state, batch)
    losses.append(float(step_metrics['loss']))
  return state, losses


def test_steps_lower_the_loss_on_a_fixed_batch():
  config = tiny_config()
  mesh = train.create_mesh(jax.devices()[:1])
  _, losses = run_steps(config, mesh, random_batch(config, 10), 6, 10)
  assert losses[-1] < 0.6 * losses[0], losses


def test_four_devices_match_one_device():
  assert jax.device_count() == 4
  config = tiny_config()
  config.optimizer.name = 'sgd'  # Adam would turn float noise in tiny gradients into lr steps.
  config.optimizer.lr = 0.01
  batch = random_batch(config, 10, seed=1)
  one = train.create_mesh(jax.devices()[:1])
  four = train.create_mesh()
  state1, losses1 = run_steps(config, one, batch, 3, 10)
  state4, losses4 = run_steps(config, four, batch, 3, 10)
  np.testing.assert_allclose(losses1, losses4, rtol=1e-4)
  assert_trees_close(state1.params, state4.params, atol=1e-4)
  # BatchNorm saw the global batch on both meshes.
  assert_trees_close(state1.batch_stats, state4.batch_stats, atol=1e-4)


# ---- Command line, resume, multi-host, end to end ----

def test_config_override_errors(tmp_path):
  base = [sys.executable, os.path.join(ROOT, 'train.py'), '--config=configs/synthetic.py',
          f'--workdir={tmp_path}']
  typo = subprocess.run(base + ['--config.optimiser.lr=0.1'], cwd=ROOT, capture_output=True,
                        text=True)
  assert typo.returncode != 0 and 'optimiser' in typo.stderr
  wrong_type = subprocess.run(base + ['--config.optimizer.lr=fast'], cwd=ROOT,
                              capture_output=True, text=True)
  assert wrong_type.returncode != 0 and 'fast' in wrong_type.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_missing_train_list_is_a_one_line_error(tmp_path):
  proc = run_train(tmp_path / 'w', tmp_path / 'nothing')
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert 'error:' in out and 'train_80.txt' in out and 'Traceback' not in out


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, synthetic_reid):
  overrides = dict(num_train_steps=30, checkpoint_every_steps=3, **{'data.val_list': ''})
  straight = run_train(tmp_path / 'straight', synthetic_reid, **overrides)
  out, _ = straight.communicate(timeout=600)
  assert straight.returncode == 0, out

  workdir = tmp_path / 'killed'
  proc = run_train(workdir, synthetic_reid, **overrides)
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '9').exists():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  killed_at, _ = final_params(workdir)
  assert 9 <= killed_at < 30

  resumed = run_train(workdir, synthetic_reid, **overrides)
  out, _ = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, out
  assert 'Resumed from step' in out
  step_a, params_a = final_params(tmp_path / 'straight')
  step_b, params_b = final_params(workdir)
  assert step_a == step_b == 30
  assert_trees_close(params_a, params_b, atol=0)
  # Each step logged once, with the same loss as the uninterrupted run.
  logged = [[json.loads(x) for x in (w / 'metrics.jsonl').read_text().splitlines()]
            for w in (tmp_path / 'straight', workdir)]
  assert [x['step'] for x in logged[1]] == list(range(1, 31))
  assert [x['loss'] for x in logged[0]] == [x['loss'] for x in logged[1]]

  # A config that no longer fits the checkpoint is one line, not orbax's traceback.
  changed = run_train(workdir, synthetic_reid, **dict(overrides, **{'model.width': 16,
                                                                     'num_train_steps': 40}))
  out, _ = changed.communicate(timeout=600)
  assert changed.returncode != 0
  assert 'error:' in out and 'cannot resume step 30' in out and 'Traceback' not in out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path, synthetic_reid):
  # Few small SGD steps: batch-hard mining is discontinuous, so float noise from another
  # reduction order grows over many steps; Adam would turn it into full lr-sized updates.
  overrides = dict(num_train_steps=3, checkpoint_every_steps=3,
                   **{'eval.every_steps': 3, 'optimizer.name': 'sgd', 'optimizer.lr': 0.01})
  single = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/synthetic.py',
       f'--workdir={tmp_path / "single"}', *tiny_flags(synthetic_reid, **overrides)],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4'))
  assert single.returncode == 0, single.stderr[-3000:]

  port = free_port()
  workdir = tmp_path / 'multi'
  procs = [subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/synthetic.py', f'--workdir={workdir}',
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}',
       *tiny_flags(synthetic_reid, **overrides)],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
      for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs, strict=True):
    assert p.returncode == 0, out[-3000:]
  assert '2 processes, 4 devices' in outs[0]

  step_a, params_a = final_params(tmp_path / 'single')
  step_b, params_b = final_params(workdir)
  assert step_a == step_b == 3
  assert_trees_close(params_a, params_b, atol=5e-5)
  # Only process 0 logs: one train line per step and one val line, not two of each.
  lines = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [x['split'] for x in lines] == ['train'] * 3 + ['val']
  single_lines = (tmp_path / 'single' / 'metrics.jsonl').read_text().splitlines()
  np.testing.assert_allclose(lines[-1]['mAP'], json.loads(single_lines[-1])['mAP'], atol=1e-4)


def test_tiny_run_learns_far_better_than_random(tmp_path, synthetic_reid):
  import input_pipeline

  config = tiny_config(str(synthetic_reid))
  config.data.image_size = (64, 32)
  config.batch_size = 32
  config.num_train_steps = 150
  config.eval.every_steps = 150
  config.eval.normalize = True
  config.optimizer.name = 'adam'
  config.optimizer.lr = 3e-3
  config.optimizer.weight_decay = 0.0
  config.schedule.name = 'cosine'
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  scores = train.train_and_evaluate(config, str(tmp_path / 'run'))

  val = input_pipeline.read_filelist(
      os.path.join(synthetic_reid, config.data.val_list),
      os.path.join(synthetic_reid, config.data.image_dir))
  rng = np.random.default_rng(0)
  chance = metrics.reid_metrics(rng.normal(size=(val.num_images, 128)), val.labels)
  assert scores['mAP'] > chance['mAP'] + 0.25, (scores, chance)
  assert scores['R1'] > chance['R1'] + 0.5, (scores, chance)
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[-1])['split'] == 'val'
  assert os.path.exists(tmp_path / 'run' / 'config.json')


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, synthetic_reid):
  config = tiny_config(str(synthetic_reid))
  config.data.val_list = ''
  config.optimizer.name = 'sgd'
  config.optimizer.lr = 1e30  # parameters overflow within a few steps
  config.num_train_steps = 40
  config.checkpoint_every_steps = 1
  config.log_every_steps = 1
  with pytest.raises(FloatingPointError, match='Last good checkpoint: step') as error:
    train.train_and_evaluate(config, str(tmp_path))
  step, params = final_params(tmp_path)
  assert f'step {step} in' in str(error.value)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
