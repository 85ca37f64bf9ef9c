"""Tests for the benchmarks on tiny settings, including benchmarks/gpu.py's CPU dry run.

PyTorch only ever runs in child processes here: its CUDA build crashes in a process that has
used JAX, and this one has.
"""

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


def run_python(code: str) -> dict:
  """Runs `code` in a fresh Python process (project root importable); the JSON it prints last."""
  result = subprocess.run([sys.executable, '-c', f'import sys; sys.path.insert(0, {ROOT!r})\n'
                           + code], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


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
  assert row['devices'] == 4 and row['global_batch'] == 16 and row['step'] == 'train'
  assert row['images_per_s'] > 0 and len(row['runs_s']) == 2
  assert row['images_per_s'] == pytest.approx(16 / (row['step_ms'] / 1e3))
  # Forward + backward = ~3x the forward's 2 FLOPs per MAC (XLA skips padding taps).
  assert row['analytic_flops_per_image'] == hand_count
  assert hand_count / 2 < row['flops_per_image'] < hand_count * 2
  assert np.isfinite(row['final_loss']) and row['compile_s'] > 0
  assert row['mfu'] is None and row['peak_memory_bytes'] is None  # CPU: no peak, no table entry
  assert 'Device: 4 × cpu' in stdout and 'Command: python benchmarks/train_step.py' in stdout
  (cells,) = table_rows(stdout)
  assert cells[:4] == ['train', '4', '16', 'float32'] and float(cells[6]) > 0
  assert cells[10] == 'n/a' and cells[11] == 'n/a'


def test_train_step_peak_flops_table():
  bench = load('train_step')
  assert bench.peak_flops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
  assert bench.peak_flops('NVIDIA H200', 'float32') == 494e12  # JAX's default precision: TF32
  assert bench.peak_flops('cpu', 'bfloat16') is None


def test_where_time_goes_reads_a_gpu_trace():
  bench = load('train_step')
  meta = [{'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
          {'ph': 'M', 'pid': 2, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
          {'ph': 'M', 'pid': 2, 'tid': 7, 'name': 'thread_name',
           'args': {'name': 'Stream #7(Compute)'}}]
  ops_line = [{'ph': 'M', 'pid': 2, 'tid': 9, 'name': 'thread_name', 'args': {'name': 'XLA Ops'}},
              {'ph': 'X', 'pid': 2, 'tid': 9, 'ts': 0, 'dur': 60, 'name': 'cudnn-conv-bw-filter.3'},
              {'ph': 'X', 'pid': 2, 'tid': 9, 'ts': 60, 'dur': 20, 'name': 'loop_multiply_fusion'},
              {'ph': 'X', 'pid': 2, 'tid': 9, 'ts': 100, 'dur': 10, 'name': 'input_reduce_fusion'},
              {'ph': 'X', 'pid': 2, 'tid': 9, 'ts': 110, 'dur': 10, 'name': 'loop_convert_fusion'}]
  kernels = [{'ph': 'X', 'pid': 2, 'tid': 7, 'ts': 5, 'dur': 50, 'name': 'sm90_xmma_fprop_bf16'},
             {'ph': 'X', 'pid': 2, 'tid': 7, 'ts': 40, 'dur': 40, 'name': 'nchwToNhwcKernel'},
             {'ph': 'X', 'pid': 1, 'tid': 1, 'ts': 0, 'dur': 5000, 'name': 'PjitFunction(step)'}]
  summary = bench.where_time_goes({'traceEvents': meta + ops_line + kernels}, steps=2)
  assert summary['source'] == 'device XLA Ops line' and summary['events'] == 4
  # Busy is the union of the events (a 20 us gap), the window first start to last end.
  assert summary['busy_ms'] == pytest.approx(0.1) and summary['window_ms'] == pytest.approx(0.12)
  assert summary['ms_per_step'] == pytest.approx(0.05)
  shares = {category: share for category, _, share in summary['categories']}
  # 'convert' is no convolution: loop_convert_fusion is elementwise.
  assert shares == pytest.approx({'convolution': 0.6, 'elementwise fusion': 0.3,
                                  'reduction fusion': 0.1})
  assert summary['top_ops'][0][:2] == ['cudnn-conv-bw-filter.3', pytest.approx(0.06)]
  assert 'busy 0.1 ms of a 0.1 ms window (83%' in bench.trace_summary({**summary, 'steps': 2})
  # Without an XLA Ops line: the stream's kernels, overlapping ones counted once as busy.
  summary = bench.where_time_goes({'traceEvents': meta + kernels}, steps=1)
  assert summary['source'] == 'device stream (kernel) lines' and summary['events'] == 2
  assert summary['busy_ms'] == pytest.approx(0.075) and summary['window_ms'] == 0.075
  assert {c for c, _, _ in summary['categories']} == {'convolution', 'copy / transpose'}
  assert bench.where_time_goes({'traceEvents': []}, steps=1)['events'] == 0


# ---- benchmarks/machine.py ----


def test_tensorflow_placeholder_resolves_names_and_refuses_calls():
  machine = load('machine')
  tf = machine._NoTensorFlow('tensorflow')
  assert isinstance(tf.Tensor, machine._NoTensorFlow) and tf.data.Options is tf.data.Options
  assert dict[str, tf.Tensor]  # annotations like input_pipeline's evaluate
  assert tf.config.set_visible_devices([], 'GPU') is None  # "TF sees no GPU" holds without TF
  with pytest.raises(RuntimeError, match=r'tensorflow\.data\.Dataset\.range\(\): TensorFlow is '):
    tf.data.Dataset.range(3)
  with pytest.raises(ValueError):
    try:
      raise ValueError('not a TensorFlow error')
    except tf.errors.OpError:  # an exception class, so except clauses work; nothing raises it
      pytest.fail('caught by the placeholder')
  with pytest.raises(AttributeError):
    _ = tf.__path__  # not a package: `import tensorflow.x` fails


# ---- benchmarks/gpu.py ----


def test_gpu_plan_puts_the_first_comparison_first():
  gpu = load('gpu')

  def make(kind, dtype, batch):
    return gpu.Task(f'{kind} {dtype} {batch}', kind, 'rows', None)

  names = [t.name for t in gpu.plan([128, 256, 64], ['bfloat16', 'float32'], list(gpu.PARTS),
                                    [20000, 100000], make)]
  assert names == [
      'jax bfloat16 128', 'torch_compile bfloat16 128', 'torch_eager None None',
      'jax float32 128', 'embed bfloat16 None', 'metrics None 20000', 'metrics None 100000',
      'jax bfloat16 256', 'torch_compile bfloat16 256', 'jax bfloat16 64',
      'torch_compile bfloat16 64', 'jax float32 256', 'jax float32 64',
      'torch_compile float32 128', 'torch_compile float32 256', 'torch_compile float32 64',
      'embed float32 None']
  names = [t.name for t in gpu.plan([128, 64], ['bfloat16'], ['jax', 'metrics'], [500], make)]
  assert names == ['jax bfloat16 128', 'metrics None 500', 'jax bfloat16 64']


def test_gpu_budget_skips_what_does_not_fit_and_records_failures():
  gpu = load('gpu')
  now, logged, done = [0.0], [], []

  def task(name, kind, wall, error=None, skip=None):
    def run(timeout):
      assert timeout == pytest.approx(max(130 - now[0], 30))  # what is left of the budget
      now[0] += wall
      if error:
        raise error
      return [{'n': 1, 'median_s': wall}]
    return gpu.Task(name, kind, 'metrics', run, skip=skip)

  tasks = [task('a', 'jax', 50), task('b', 'torch_compile', 100), task('c', 'jax', 10),
           task('d', 'jax', 10, RuntimeError('child failed:\nTraceback\nValueError: bad')),
           task('e', 'metrics', 5, subprocess.TimeoutExpired('python', 60)),
           task('f', 'embed', 1), task('g', 'torch_eager', 1, skip='torch not installed')]
  records = gpu.run_tasks(tasks, 130, lambda r: done.append(len(r)), clock=lambda: now[0],
                          log=logged.append)
  # a: 75 s first estimate fits 130; b: 120 > 80 left; c: jax now estimated at a's 50 s; d fails
  # (estimate kept); e: 40 fits 60 but times out; f: embed's 45 fits 55.
  assert [r['status'] for r in records] == ['ok', 'skipped', 'ok', 'failed', 'timed out', 'ok',
                                            'skipped']
  assert [r['estimate_s'] for r in records[:5]] == [75, 120, 50, 10, 40]
  assert records[1]['note'] == 'budget: needs ~120 s, 80 s left'
  assert records[3]['note'] == 'ValueError: bad' and records[6]['note'] == 'torch not installed'
  assert records[0]['rows'] == [{'n': 1, 'median_s': 50}] and records[3]['rows'] == []
  assert records[4]['note'] == 'stopped after 5 s (budget)'
  assert done == [1, 3, 4, 5, 6]  # after each task that ran, with the records so far
  assert any('skip b: budget' in line for line in logged)


def test_gpu_dry_run_writes_every_table(tmp_path):
  out = tmp_path / 'out'
  result = run_script('gpu', '--dry_run', f'--out={out}')
  results = json.loads((out / 'gpu.json').read_text())
  md = (out / 'gpu.md').read_text()
  assert md in result.stdout
  tasks = {t['name']: (t['status'], t['note']) for t in results['tasks']}
  assert list(tasks) == ['JAX train bfloat16 batch 4 + trace', 'PyTorch compile bfloat16 batch 4',
                         'PyTorch eager, every batch and dtype', 'JAX embedding bfloat16 batch 4',
                         'metrics N=1000']  # --dry_run: one batch size, one dtype, one N
  for name, (status, note) in tasks.items():
    if name.startswith('PyTorch') and not HAS_TORCH:
      assert (status, note) == ('skipped', 'torch not installed')
    else:
      assert status == 'ok', (name, note)

  # JAX's step on 2 fake CPU devices, imported without TensorFlow as on the GPU machines.
  (train,) = results['jax_train']
  assert train['step'] == 'train' and train['devices'] == 2 and train['backend'] == 'cpu'
  assert train['tensorflow_placeholder'] and train['dtype'] == 'bfloat16'
  assert train['per_device_batch'] == 4 and train['global_batch'] == 8
  assert train['images_per_s'] > 0 and len(train['runs_s']) == 2 and train['flops_per_image'] > 0
  trace = results['trace']
  assert trace['config'] == 'train bfloat16 batch 4' and trace['events'] > 0
  assert sorted(os.listdir(out / 'trace')) == sorted(trace['files'])
  assert {f.split('.', 1)[1] for f in trace['files']} == {'trace.json.gz', 'xplane.pb'}
  (embed,) = results['embed']
  assert embed['step'] == 'embed' and embed['images_per_s'] > 0 and embed['global_batch'] == 8
  (metrics,) = results['metrics']
  assert metrics['n'] == 1000 and metrics['runs'] == 3 and 0 < metrics['mAP'] <= 1

  (compared,) = results['comparison']
  (ratio, mfu) = results['targets']
  assert mfu['value'] is None and mfu['met'] is None  # no peak FLOP/s for a CPU
  if HAS_TORCH:
    modes = {r['mode']: r for r in results['torch']}
    assert sorted(modes) == ['compile', 'eager'] and len(results['torch']) == 2
    expected = train['images_per_s_per_device'] / modes['compile']['images_per_s']
    assert compared['jax_over_torch_compile'] == pytest.approx(expected)
    assert ratio['value'] == pytest.approx(expected) and ratio['met'] == (expected >= 1.25)
  else:
    assert results['torch'] == [] and ratio['value'] is None

  sections = {part.split('\n', 1)[0]: part for part in md.split('\n## ')}
  (jax_section,) = [v for k, v in sections.items() if k.startswith('1. JAX train step')]
  (cells,) = table_rows(jax_section)
  assert cells[:4] == ['train', '4', '8', 'bfloat16']
  assert float(cells[6]) == pytest.approx(train['images_per_s'], rel=0.01)
  (test_time,) = [v for k, v in sections.items() if k.startswith('3. Test time')]
  embed_table, metrics_table = [table_rows(t) for t in test_time.split('\n\n') if t[:1] == '|']
  assert [row[0] for row in embed_table] == ['embed'] and metrics_table[0][:2] == ['1000', '128']
  (trace_section,) = [v for k, v in sections.items() if k.startswith("Where the JAX step")]
  assert f"{trace['steps']} traced steps" in trace_section
  (task_section,) = [v for k, v in sections.items() if k.startswith('Tasks')]
  assert [row[0] for row in table_rows(task_section)] == list(tasks)


def test_gpu_refuses_to_overwrite_results_and_needs_a_folder(tmp_path):
  (tmp_path / 'gpu.json').write_text('earlier run')
  command = [sys.executable, os.path.join(BENCH, 'gpu.py'), '--dry_run']
  env = {k: v for k, v in os.environ.items() if k != 'OUT'}
  result = subprocess.run(command + [f'--out={tmp_path}'], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode != 0 and 'already holds gpu.json' in result.stderr
  assert (tmp_path / 'gpu.json').read_text() == 'earlier run'
  result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode != 0 and 'give --out=FOLDER or set $OUT' in result.stderr


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


# ---- benchmarks/torch_train_step.py (torch in child processes only) ----


def test_torch_script_skips_cleanly_without_torchvision():
  if importlib.util.find_spec('torchvision') is not None:
    pytest.skip('torchvision is installed')
  result = run_script('torch_train_step')
  assert 'skipped: t' in result.stdout  # torch or torchvision not installed


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_hand_built_resnet50_is_torchvision_resnet50():
  import jax
  import jax.numpy as jnp

  import models
  import pretrained
  torch_side = run_python('''
import json, torch
from benchmarks import torch_train_step
backbone = torch_train_step.build_resnet(50, 64)
print(json.dumps({
    'keys': [k for k in backbone.state_dict() if not k.endswith('num_batches_tracked')],
    'params': sum(p.numel() for p in backbone.parameters()),
    'stride': list(backbone.layer4[0].conv2.stride),
    'shape': list(backbone(torch.zeros(2, 3, 256, 128)).shape)}))
''')
  # torchvision resnet50 has 25,557,032 parameters, 2,049,000 of them in the ImageNet fc.
  assert torch_side['params'] == 25_557_032 - 2_049_000
  # Same names as torchvision, which pretrained.py maps one to one onto our Flax ResNet-50.
  variables = jax.eval_shape(lambda: models.ResNet(50).init(
      jax.random.key(0), jnp.zeros((1, 64, 32, 3)), train=False))
  expected = set(pretrained._backbone_targets(variables['params'], variables['batch_stats']))
  assert set(torch_side['keys']) == expected
  assert torch_side['stride'] == [2, 2]  # last stride 2, on the 3x3 conv
  assert torch_side['shape'] == [2, 2048, 8, 4]


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_torch_loss_matches_train_py():
  import train
  rng = np.random.default_rng(0)
  embedding = rng.normal(size=(16, 8)).astype(np.float32)
  logits = rng.normal(size=(16, 5)).astype(np.float32)
  labels = np.arange(16) // 4
  ours = train.cross_entropy_loss(logits, labels) + train.batch_hard_triplet_loss(embedding,
                                                                                  labels)
  data = json.dumps({'embedding': embedding.tolist(), 'logits': logits.tolist(),
                     'labels': labels.tolist()})
  theirs = run_python(f'''
import json, torch
from benchmarks import torch_train_step
d = json.loads({data!r})
loss = torch_train_step.reid_loss(*(torch.tensor(d[k]) for k in ('embedding', 'logits', 'labels')))
print(json.dumps(float(loss)))
''')
  assert theirs == pytest.approx(float(ours), rel=1e-5)


@pytest.mark.skipif(not HAS_TORCH, reason='torch not installed')
def test_torch_step_and_comparison_table(jax_run):
  _, jax_row = jax_run
  torch_bench = load('torch_train_step')
  (row,) = torch_bench.time_in_subprocess([4], ['float32'], ['eager'], depth=18, width=8,
                                          image_size=(32, 16), num_classes=10, steps=1, runs=2,
                                          warmup=1, use_torchvision=False)
  assert row['images_per_s'] == pytest.approx(4 / (row['step_ms'] / 1e3))
  assert len(row['runs_s']) == 2 and np.isfinite(row['loss_after_warmup'])
  assert row['model'].startswith('hand-built') and row['mode'] == 'eager'
  (cells,) = table_rows(torch_bench.torch_table([row]))
  assert cells[:3] == ['4', 'float32', 'eager'] and float(cells[6]) > 0
  (cells,) = table_rows(torch_bench.compare_table([jax_row], [row], ['eager', 'compile']))
  jax_rate, torch_rate, ratio = float(cells[2]), float(cells[3]), float(cells[4].rstrip('×'))
  # The table prints rounded figures; slow runs on a loaded machine print few digits.
  assert jax_rate == pytest.approx(jax_row['images_per_s_per_device'], rel=0.02)
  assert torch_rate == pytest.approx(row['images_per_s'], rel=0.02)
  assert ratio == pytest.approx(jax_rate / torch_rate, rel=0.05)
  assert cells[5:] == ['not run', '-']  # no compile row: said so, not a crash


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
