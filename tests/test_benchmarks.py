"""Tests for benchmarks/{train_step,torch_train_step,end_to_end}.py on tiny settings."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')
TINY = ['--depth=18', '--width=8', '--image_size=32,16', '--num_classes=10', '--steps=1',
        '--runs=2', '--warmup=1']
HAS_TORCH = importlib.util.find_spec('torch') is not None


def load(name: str):
  """benchmarks/<name>.py as a module (benchmarks/ must not go on sys.path: it shadows modules)."""
  spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(BENCH, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, os.path.join(BENCH, f'{name}.py'), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def table_rows(stdout: str) -> list[list[str]]:
  """Cells of the markdown table rows after the header separator."""
  lines = stdout.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith('|---'))
  return [[c.strip() for c in line.strip('|').split('|')] for line in lines[start + 1:]
          if line.startswith('|')]


# ---- benchmarks/train_step.py ----


def test_analytic_macs_match_torchvision_resnet50():
  # torchvision documents 4.09 GFLOPS (multiply-adds) for resnet50 at 224x224 with its fc.
  bench = load('train_step')
  macs = bench.forward_macs_per_image(50, 64, (224, 224), num_classes=1000, head='bnneck')
  assert macs == pytest.approx(4.09e9, rel=0.005)
  # 256x128 has 0.65x the pixels; the ReID model's head adds ~2.2 M.
  reid = bench.forward_macs_per_image(50, 64, (256, 128), num_classes=380)
  assert reid == pytest.approx(macs * 256 * 128 / 224**2, rel=0.02)


@pytest.fixture(scope='module')
def jax_run(tmp_path_factory):
  """One tiny run of the train_step CLI: (stdout, result row)."""
  out = tmp_path_factory.mktemp('train_step') / 'rows.json'
  result = run_script('train_step', *TINY, '--per_device_batch=4', '--dtypes=float32',
                      f'--json_out={out}')
  (row,) = json.loads(out.read_text())
  return result.stdout, row


def test_train_step_cli_reports_plausible_numbers(jax_run):
  stdout, row = jax_run
  bench = load('train_step')
  hand_count = 6 * bench.forward_macs_per_image(18, 8, (32, 16), num_classes=10)
  # conftest gives 4 CPU devices: the global batch spans all of them.
  assert row['devices'] == 4 and row['global_batch'] == 16
  assert row['images_per_s'] > 0 and len(row['runs_s']) == 2
  assert row['images_per_s'] == pytest.approx(16 / (row['step_ms'] / 1e3))
  # Forward + backward = ~3x the forward's 2 FLOPs per MAC (XLA skips padding taps).
  assert hand_count / 2 < row['flops_per_image'] < hand_count * 2
  assert np.isfinite(row['loss_after_warmup']) and row['compile_s'] > 0
  assert row['mfu'] is None and row['peak_memory_bytes'] is None  # CPU: no peak, no table entry
  assert 'Device: 4 × cpu' in stdout and 'Command: python benchmarks/train_step.py' in stdout
  (cells,) = table_rows(stdout)
  assert cells[:3] == ['4', '16', 'float32'] and float(cells[5]) > 0
  assert cells[9] == 'n/a' and cells[10] == 'n/a'


def test_train_step_peak_flops_table():
  bench = load('train_step')
  assert bench.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert bench.peak_flops('NVIDIA H200', 'float32') == 494e12  # JAX's default precision: TF32
  assert bench.peak_flops('cpu', 'bfloat16') is None


# ---- benchmarks/end_to_end.py ----

LOG = """\
I1125 05:50:31.000000 1 train.py:300] 120 images, 8 identities; 4 steps of 16 images
I1125 05:50:40.250000 1 train.py:367] step 2/4 epoch 0.67 loss 5.5 acc 0.1 3.5 img/s ETA 00:00
I1125 05:50:43.750000 1 train.py:376] step 2 val mAP 58.7 R1 95.3
I1125 05:50:44.250000 1 train.py:367] step 4/4 epoch 1.33 loss 5.2 acc 0.1 60.5 img/s ETA 00:00
I1125 05:50:44.500000 1 train.py:376] step 4 val mAP 59.7 R1 96.0
"""


def test_end_to_end_reads_evaluation_time_from_the_log():
  e2e = load('end_to_end')
  log = e2e.parse_train_log(LOG)
  assert log['eval_s'] == pytest.approx(3.5 + 0.25)
  assert log['eval_exact'] and log['num_evals'] == 2
  assert log['steps'] == 4 and log['images_per_s'] == 60.5
  # A val line not right after its step's train line includes training time: flagged.
  shifted = LOG.replace('step 4/4', 'step 3/4')
  assert not e2e.parse_train_log(shifted)['eval_exact']
  # Across midnight the clock restarts; the difference is still the real one.
  midnight = ('I1125 23:59:59.500000 1 train.py:367] step 2/4 x 1.0 img/s\n'
              'I1126 00:00:01.000000 1 train.py:376] step 2 val mAP 1.0\n')
  assert e2e.parse_train_log(midnight)['eval_s'] == pytest.approx(1.5)


def test_end_to_end_never_deletes_a_folder_it_did_not_make(tmp_path):
  e2e = load('end_to_end')
  user = tmp_path / 'precious'
  user.mkdir()
  (user / 'data.txt').write_text('keep')
  for overwrite in (False, True):
    with pytest.raises(app.UsageError):
      e2e.prepare_output_dir(str(user), overwrite)
  assert (user / 'data.txt').read_text() == 'keep'
  ours = tmp_path / 'ours'
  e2e.prepare_output_dir(str(ours), False)
  (ours / 'old').write_text('stale')
  e2e.prepare_output_dir(str(ours), True)
  assert not (ours / 'old').exists() and (ours / e2e.MARKER).exists()


def test_end_to_end_tiny_run(tmp_path):
  result = run_script(
      'end_to_end', f'--output_dir={tmp_path / "e2e"}', '--synthetic_arg=--num_sequences=2',
      '--synthetic_arg=--num_frames=30', '--synthetic_arg=--num_people=6',
      '--synthetic_arg=--width=320', '--synthetic_arg=--height=180',
      '--train_arg=--config.num_train_steps=2', '--train_arg=--config.model.width=8',
      '--train_arg=--config.data.image_size=(32,16)', '--train_arg=--config.batch_size=16',
      '--train_arg=--config.log_every_steps=2', '--train_arg=--config.eval.every_steps=2',
      '--train_arg=--config.eval.frame_gap=0', '--train_arg=--config.schedule.warmup_steps=0',
      env=dict(os.environ, XLA_FLAGS=''))  # one device: compiles faster than conftest's four
  (cells,) = table_rows(result.stdout)
  render, convert, train, evaluate, total = (float(c) for c in cells[:5])
  assert min(render, convert, train, evaluate) > 0
  assert total == pytest.approx(render + convert + train + evaluate, abs=0.15)
  assert cells[5] == '2' and cells[7] == '1' and re.match(r'mAP \d', cells[8])


# ---- benchmarks/torch_train_step.py ----


def test_torch_script_skips_cleanly_without_torchvision():
  if importlib.util.find_spec('torchvision') is not None:
    pytest.skip('torchvision is installed')
  result = run_script('torch_train_step')
  assert 'skipped: t' in result.stdout  # torch or torchvision not installed


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_hand_built_resnet50_is_torchvision_resnet50():
  torch_bench = load('torch_train_step')
  import models

  backbone = torch_bench.build_resnet(50, 64)
  state = backbone.state_dict()
  # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in the ImageNet fc.
  assert sum(p.numel() for p in backbone.parameters()) == 25_557_032 - 2_049_000
  # Same names as torchvision, which models.py maps one to one onto our Flax ResNet-50.
  import jax
  import jax.numpy as jnp
  variables = jax.eval_shape(lambda: models.ResNet(50).init(
      jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False))
  expected = set(models._backbone_targets(variables['params'], variables['batch_stats']))
  assert {k for k in state if not k.endswith('num_batches_tracked')} == expected
  assert backbone.layer4[0].conv2.stride == (2, 2)  # last stride 2, on the 3x3 conv
  import torch
  assert backbone(torch.zeros(2, 3, 256, 128)).shape == (2, 2048, 8, 4)


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_torch_loss_matches_train_py():
  import torch

  import train
  torch_bench = load('torch_train_step')
  rng = np.random.default_rng(0)
  embedding = rng.normal(size=(16, 8)).astype(np.float32)
  logits = rng.normal(size=(16, 5)).astype(np.float32)
  labels = np.arange(16) // 4
  ours = train.cross_entropy_loss(logits, labels) + train.batch_hard_triplet_loss(embedding,
                                                                                  labels)
  theirs = torch_bench.reid_loss(torch.from_numpy(embedding), torch.from_numpy(logits),
                                 torch.from_numpy(labels))
  assert float(theirs) == pytest.approx(float(ours), rel=1e-5)


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_torch_step_and_comparison_table(jax_run):
  _, jax_row = jax_run
  torch_bench = load('torch_train_step')
  row = torch_bench.time_torch_step(4, 'float32', 'eager', depth=18, width=8, image_size=(32, 16),
                                    num_classes=10, steps=1, runs=2, warmup=1,
                                    use_torchvision=False)
  assert row['images_per_s'] == pytest.approx(4 / (row['step_ms'] / 1e3))
  assert len(row['runs_s']) == 2 and np.isfinite(row['loss_after_warmup'])
  assert row['model'].startswith('hand-built')
  (cells,) = table_rows(torch_bench.torch_table([row]))
  assert cells[:3] == ['4', 'float32', 'eager'] and float(cells[6]) > 0
  (cells,) = table_rows(torch_bench.compare_table([jax_row], [row], ['eager']))
  jax_rate, torch_rate, ratio = float(cells[2]), float(cells[3]), float(cells[4].rstrip('×'))
  # The table prints rounded figures; slow runs on a loaded machine print few digits.
  assert jax_rate == pytest.approx(jax_row['images_per_s_per_device'], rel=0.02)
  assert torch_rate == pytest.approx(row['images_per_s'], rel=0.02)
  assert ratio == pytest.approx(jax_rate / torch_rate, rel=0.05)


# ---- benchmarks/input_pipeline.py ----


def test_input_pipeline_benchmark_pins_processes_and_reports_both_loaders(synthetic_reid):
  result = run_script('input_pipeline', f'--data_root={synthetic_reid}', '--p=4', '--k=2',
                      '--steps=2', '--runs=1', '--warmup=1', '--cores=1', '--breakdown')
  rows = table_rows(result.stdout)
  loaders = [r[0] for r in rows[:2]]
  assert loaders == ['tf.data (1 core)', 'PIL + NumPy (1 core)'], result.stdout
  assert float(rows[1][5].rstrip('x')) == 1.0 and float(rows[0][2]) > 0
  stages = table_rows(result.stdout.split('Microseconds per image')[1])
  assert [s[0] for s in stages][:3] == ['read the file', '+ decode (RGB)', '+ resize to 256x128']
  assert all(float(s[1]) > 0 and float(s[2]) > 0 for s in stages)
