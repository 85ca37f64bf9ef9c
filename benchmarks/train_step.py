"""Images/s of train.py's jit-sharded train step on device-resident random batches.

  python benchmarks/train_step.py                          # ResNet-50 + linear head, 256x128
  python benchmarks/train_step.py --per_device_batch=32,64,128 --dtypes=bfloat16,float32
  python benchmarks/train_step.py --depth=18 --width=8 --image_size=32,16 --steps=2 --runs=2

The step is train.py's own (`train.train_step`, jitted with the same shardings and donation, the
optimizer and schedule of configs/mot17.py); only the input pipeline is left out. Each
(batch, dtype) pair is compiled and timed in a fresh process (--isolate) so the device's peak
memory is that configuration's own. FLOPs come from XLA's cost analysis of the compiled step
(per device, so divided by the per-device batch); MFU compares them with the device's peak.
"""

import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import models  # noqa: E402
import train  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402
from configs import mot17  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script: torch_train_step imports us)."""
  flags.DEFINE_list('per_device_batch', ['32', '64', '128'], 'Per-device batch sizes to time.')
  flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'config.model.dtype values to time.')
  flags.DEFINE_integer('depth', 50, 'ResNet depth.')
  flags.DEFINE_integer('width', 64, 'ResNet base width (64 = the real model).')
  flags.DEFINE_list('image_size', ['256', '128'], 'Crop size H,W.')
  flags.DEFINE_integer('num_classes', 380, 'Classifier size (MMDet hard-codes 380 for MOT17).')
  flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
  flags.DEFINE_integer('runs', 5, 'Timed runs (median reported).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_bool('isolate', True,
                    'Time each configuration in a fresh process (so peak memory is its own).')
  flags.DEFINE_string('json_out', None, 'Also write the results as JSON to this file.')


# Dense peak FLOP/s by device kind substring (NVIDIA datasheets, SXM parts).
PEAK_FLOPS = {
    'H100': {'bfloat16': 989e12, 'float32': 67e12, 'tf32': 494e12},
    'H200': {'bfloat16': 989e12, 'float32': 67e12, 'tf32': 494e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak dense FLOP/s for `dtype` on this device kind, or None when not in the table."""
  precision = str(jax.config.jax_default_matmul_precision or 'default').lower()
  # JAX's default precision runs float32 convs/matmuls as TF32 on tensor cores.
  if dtype == 'float32' and precision not in ('highest', 'float32'):
    dtype = 'tf32'
  for name, peaks in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return peaks[dtype]
  return None


# ---- Analytic FLOPs (cross-check of XLA's count) ----


def forward_macs_per_image(depth: int, width: int, image_size: tuple[int, int],
                           last_stride: int = 2, hidden_dim: int = 1024, embed_dim: int = 128,
                           num_classes: int = 0, head: str = 'linear') -> int:
  """Multiply-accumulates of one image's forward pass through convs and dense layers."""
  kind, blocks_per_stage = models.RESNET_LAYOUTS[depth]
  h, w = image_size

  def out(size: int, kernel: int, stride: int) -> int:
    return (size + 2 * (kernel // 2) - kernel) // stride + 1

  def conv(cin: int, cout: int, kernel: int, stride: int) -> int:
    nonlocal h, w
    h, w = out(h, kernel, stride), out(w, kernel, stride)
    return h * w * cin * cout * kernel * kernel

  macs = conv(3, width, 7, 2)
  h, w = out(h, 3, 2), out(w, 3, 2)  # max pool
  channels = width
  for stage, num_blocks in enumerate(blocks_per_stage):
    planes = width * 2**stage
    for index in range(num_blocks):
      stride = (1 if stage == 0 else (last_stride if stage == 3 else 2)) if index == 0 else 1
      out_channels = planes * models.EXPANSION[kind]
      h_in, w_in = h, w
      if kind == 'basic':
        macs += conv(channels, planes, 3, stride) + conv(planes, planes, 3, 1)
      else:
        macs += conv(channels, planes, 1, 1) + conv(planes, planes, 3, stride)
        macs += conv(planes, out_channels, 1, 1)
      if stride != 1 or channels != out_channels:
        macs += out(h_in, 1, stride) * out(w_in, 1, stride) * channels * out_channels
      channels = out_channels
  if head == 'linear':
    macs += channels * hidden_dim + hidden_dim * embed_dim + embed_dim * num_classes
  else:
    macs += channels * num_classes
  return macs


# ---- One configuration ----


def benchmark_config(depth: int, width: int, image_size: tuple[int, int], dtype: str,
                     batch_size: int, num_classes: int) -> ml_collections.ConfigDict:
  """configs/mot17.py's recipe with the model, dtype, crop size and global batch overridden."""
  config = mot17.get_config()
  config.model.depth = depth
  config.model.width = width
  config.model.dtype = dtype
  config.data.image_size = tuple(image_size)
  config.batch_size = batch_size
  config.num_classes = num_classes
  return config


def random_batch(batch_size: int, image_size: tuple[int, int], k: int, num_classes: int,
                 sharding: jax.sharding.Sharding, seed: int = 0) -> dict[str, jax.Array]:
  """Random uint8 images and P x K labels, placed on the mesh like prefetch_to_mesh does."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, *image_size, 3), dtype=np.uint8)
  labels = ((np.arange(batch_size) // k) % num_classes).astype(np.int32)
  return jax.device_put({'image': images, 'label': labels}, sharding)


def peak_memory_bytes() -> int | None:
  """Largest peak_bytes_in_use over local devices; None where the backend has no stats (CPU)."""
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  return max(peaks) if peaks else None


def time_train_step(per_device_batch: int, dtype: str, *, depth: int = 50, width: int = 64,
                    image_size: tuple[int, int] = (256, 128), num_classes: int = 380,
                    steps: int = 20, runs: int = 5, warmup: int = 3) -> dict[str, Any]:
  """Compiles and times train.py's step for one configuration; returns a result row as a dict."""
  mesh = train.create_mesh()
  num_devices = mesh.devices.size
  batch_size = per_device_batch * num_devices
  config = benchmark_config(depth, width, image_size, dtype, batch_size, num_classes)
  # Step count doesn't change the step's cost; 1000 steps/epoch keeps mot17's decay after warmup.
  schedule = train.create_learning_rate_schedule(config, 1000, 6000)
  model = models.create_model(config.model, num_classes)
  state = train.create_train_state(config, model, train.create_optimizer(config, schedule), mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batch = random_batch(batch_size, tuple(image_size), config.data.k, num_classes, data_sharding)

  # Exactly train.py's jit: same partial, shardings and donation of the state.
  jitted = jax.jit(functools.partial(train.train_step, config=config, schedule=schedule),
                   in_shardings=(replicated, data_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))
  start = time.perf_counter()
  compiled = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older JAX returned one dict per device
  flops_per_image = float(cost['flops']) / per_device_batch if cost.get('flops') else None
  memory = compiled.memory_analysis()
  planned = None
  if memory is not None:
    planned = (memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes + memory.temp_size_in_bytes)

  for _ in range(max(warmup, 1)):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  loss = float(metrics['loss'])
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times) / steps
  images_per_s = batch_size / step_s

  device_kind = jax.devices()[0].device_kind
  peak = peak_flops(device_kind, dtype)
  mfu = None
  if peak and flops_per_image:
    mfu = flops_per_image * images_per_s / (peak * num_devices)
  macs = forward_macs_per_image(depth, width, tuple(image_size), num_classes=num_classes)
  return {
      'per_device_batch': per_device_batch, 'global_batch': batch_size, 'dtype': dtype,
      'devices': num_devices, 'device_kind': device_kind, 'compile_s': compile_s,
      'step_ms': 1e3 * step_s, 'images_per_s': images_per_s,
      'images_per_s_per_device': images_per_s / num_devices,
      'flops_per_image': flops_per_image, 'analytic_train_flops_per_image': 6.0 * macs,
      'mfu': mfu, 'peak_memory_bytes': peak_memory_bytes(), 'planned_memory_bytes': planned,
      'loss_after_warmup': loss, 'runs_s': times,
  }


# ---- Report ----


def _gib(value: float | None) -> str:
  return 'n/a' if value is None else f'{value / 2**30:.2f}'


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown table of result rows."""
  lines = ['| per-device batch | global batch | dtype | compile (s) | step (ms) | images/s | '
           'images/s/device | GFLOPs/image (XLA) | XLA / 6×MACs | MFU | peak mem (GiB) | '
           'XLA plan (GiB) |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    flops = r['flops_per_image']
    ratio = flops / r['analytic_train_flops_per_image'] if flops else None
    lines.append('| ' + ' | '.join([
        str(r['per_device_batch']), str(r['global_batch']), r['dtype'], f"{r['compile_s']:.1f}",
        f"{r['step_ms']:.1f}", f"{r['images_per_s']:.1f}", f"{r['images_per_s_per_device']:.1f}",
        'n/a' if flops is None else f'{flops / 1e9:.3g}',
        'n/a' if ratio is None else f'{ratio:.2f}',
        'n/a' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%",
        _gib(r['peak_memory_bytes']), _gib(r['planned_memory_bytes'])]) + ' |')
  return '\n'.join(lines)


def header(command: str, rows: list[dict[str, Any]]) -> str:
  """Machine, software, command and date lines printed above the table."""
  kind = rows[0]['device_kind'] if rows else jax.devices()[0].device_kind
  devices = rows[0]['devices'] if rows else jax.device_count()
  return (f'Device: {devices} × {kind} ({jax.default_backend()}); CPU: {cpu_model()}, '
          f'{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; JAX {jax.__version__}; '
          f'{datetime.datetime.now().isoformat(timespec="minutes")}\nCommand: {command}')


def time_in_subprocess(per_device_batch: int, dtype: str, *, depth: int = 50, width: int = 64,
                       image_size: tuple[int, int] = (256, 128), num_classes: int = 380,
                       steps: int = 20, runs: int = 5, warmup: int = 3,
                       env: dict[str, str] | None = None) -> dict[str, Any]:
  """time_train_step in a fresh Python process (its own device memory and peak); returns its row."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    command = [sys.executable, os.path.abspath(__file__), '--noisolate',
               f'--per_device_batch={per_device_batch}', f'--dtypes={dtype}', f'--depth={depth}',
               f'--width={width}', f'--image_size={image_size[0]},{image_size[1]}',
               f'--num_classes={num_classes}', f'--steps={steps}', f'--runs={runs}',
               f'--warmup={warmup}', f'--json_out={out}']
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
      raise RuntimeError(f'JAX step, batch {per_device_batch} {dtype}, failed:\n'
                         f'{result.stderr[-3000:]}')
    with open(out) as f:
      return json.load(f)[0]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if len(FLAGS.image_size) != 2:
    raise app.UsageError(f'--image_size needs H,W, got {",".join(FLAGS.image_size)}')
  image_size = tuple(int(v) for v in FLAGS.image_size)
  batches = [int(v) for v in FLAGS.per_device_batch]
  for dtype in FLAGS.dtypes:
    if dtype not in ('float32', 'bfloat16'):
      raise app.UsageError(f'--dtypes: unknown dtype {dtype!r} (float32, bfloat16)')
  configs = [(b, d) for b in batches for d in FLAGS.dtypes]
  rows = []
  for per_device_batch, dtype in configs:
    settings = dict(depth=FLAGS.depth, width=FLAGS.width, image_size=image_size,
                    num_classes=FLAGS.num_classes, steps=FLAGS.steps, runs=FLAGS.runs,
                    warmup=FLAGS.warmup)
    if FLAGS.isolate and len(configs) > 1:
      row = time_in_subprocess(per_device_batch, dtype, **settings)
    else:
      row = time_train_step(per_device_batch, dtype, **settings)
    rows.append(row)
    print(f"done: batch {per_device_batch} {dtype}: {row['images_per_s']:.1f} images/s",
          flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(rows, f, indent=1)
  command = 'python benchmarks/train_step.py ' + ' '.join(sys.argv[1:])
  print()
  print(header(command.rstrip(), rows))
  print(f'ResNet-{FLAGS.depth} (width {FLAGS.width}) + linear head, {FLAGS.num_classes} classes, '
        f'{image_size[0]}x{image_size[1]}; median of {FLAGS.runs} runs of {FLAGS.steps} steps '
        f'after {FLAGS.warmup} warm-up steps; random uint8 batches already on the device. '
        'MFU: against the dense peak (float32 as TF32, JAX\'s default precision). '
        'XLA / 6×MACs: XLA\'s FLOPs over 3 × (2 × the forward\'s multiply-adds). '
        'Peak mem: the device allocator\'s peak; XLA plan: arguments + outputs + temporaries.\n')
  print(table(rows))


if __name__ == '__main__':
  define_flags()
  app.run(main)
