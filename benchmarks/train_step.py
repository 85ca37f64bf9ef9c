"""Images/s of train.py's jit-sharded train step on device-resident random batches.

  python benchmarks/train_step.py                          # ResNet-50 + linear head, 256x128
  python benchmarks/train_step.py --per_device_batch=32,64,128 --dtypes=bfloat16,float32
  python benchmarks/train_step.py --depth=18 --width=8 --image_size=32,16 --steps=2 --runs=2
  python benchmarks/train_step.py --embed --per_device_batch=256    # test-time embedding step
  python benchmarks/train_step.py --per_device_batch=128 --dtypes=bfloat16 --trace_dir=/tmp/t

The step is train.py's own (`train.train_step`, jitted with the same shardings and donation, the
optimizer and schedule of configs/mot17.py); only the input pipeline is left out. --embed times
evaluation's embedding step instead. Each (batch, dtype) pair is compiled and timed in a fresh
process (--isolate) so the device's peak memory is that configuration's own. FLOPs come from
XLA's cost analysis of the compiled step (per device, so divided by the per-device batch); MFU
compares them with the device's peak. --trace_dir also records a jax.profiler trace of a few
steps after timing and summarises where the time went. Runs without TensorFlow installed.
"""

import collections
import datetime
import functools
import glob
import gzip
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine  # noqa: E402

# The GPU machines have no TensorFlow; train.py imports it, but the timed steps never use it.
TENSORFLOW_PLACEHOLDER = machine.allow_missing_tensorflow()

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import models  # noqa: E402
import train  # noqa: E402
from configs import mot17  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script: other benchmarks import us)."""
  flags.DEFINE_list('per_device_batch', ['32', '64', '128'], 'Per-device batch sizes to time.')
  flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'config.model.dtype values to time.')
  flags.DEFINE_integer('depth', 50, 'ResNet depth.')
  flags.DEFINE_integer('width', 64, 'ResNet base width (64 = the real model).')
  flags.DEFINE_list('image_size', ['256', '128'], 'Crop size H,W.')
  flags.DEFINE_integer('num_classes', 380, 'Classifier size (MMDet hard-codes 380 for MOT17).')
  flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
  flags.DEFINE_integer('runs', 5, 'Timed runs (median reported).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_bool('embed', False,
                    "Time evaluation's test-time embedding step instead of the train step.")
  flags.DEFINE_string('trace_dir', None,
                      'Also record a jax.profiler trace of --trace_steps steps after timing and '
                      'copy its files (.xplane.pb, .trace.json.gz) into this folder.')
  flags.DEFINE_integer('trace_steps', 3, 'Steps in the --trace_dir trace.')
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


def compile_stats(jitted: Any, *args: Any) -> tuple[Any, dict[str, Any]]:
  """Lowers and compiles `jitted` for `args`: (executable, compile time, XLA FLOPs and memory)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost  # older JAX returned one dict per device
  memory = compiled.memory_analysis()
  planned = None
  if memory is not None:
    planned = (memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  flops = float(cost['flops']) if cost and cost.get('flops') else None
  return compiled, {'compile_s': compile_s, 'flops': flops, 'planned_memory_bytes': planned}


def timed_runs(step: Callable[[], Any], steps: int, runs: int, warmup: int) -> list[float]:
  """Seconds of `runs` runs of `steps` calls of `step` (which returns what to wait for)."""
  for _ in range(max(warmup, 1)):
    out = step()
  jax.block_until_ready(out)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    for _ in range(steps):
      out = step()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return times


def _setup(per_device_batch: int, dtype: str, depth: int, width: int,
           image_size: tuple[int, int], num_classes: int):
  """Mesh, config, schedule, model, train state and a batch for one configuration."""
  mesh = train.create_mesh()
  batch_size = per_device_batch * mesh.devices.size
  config = benchmark_config(depth, width, image_size, dtype, batch_size, num_classes)
  # Step count doesn't change the step's cost; 1000 steps/epoch keeps mot17's decay after warmup.
  schedule = train.create_learning_rate_schedule(config, 1000, 6000)
  model = models.create_model(config.model, num_classes)
  state = train.create_train_state(config, model, train.create_optimizer(config, schedule), mesh)
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batch = random_batch(batch_size, tuple(image_size), config.data.k, num_classes, data_sharding)
  return mesh, config, schedule, model, state, batch


def _row(kind: str, per_device_batch: int, batch_size: int, dtype: str, stats: dict[str, Any],
         times: list[float], steps: int, num_devices: int) -> dict[str, Any]:
  """The fields every result row has: throughput, FLOPs per image, MFU and memory."""
  step_s = statistics.median(times) / steps
  images_per_s = batch_size / step_s
  device_kind = jax.devices()[0].device_kind
  peak = peak_flops(device_kind, dtype)
  flops_per_image = stats['flops'] / per_device_batch if stats['flops'] else None
  mfu = None
  if peak and flops_per_image:
    mfu = flops_per_image * images_per_s / (peak * num_devices)
  return {
      'step': kind, 'per_device_batch': per_device_batch, 'global_batch': batch_size,
      'dtype': dtype, 'devices': num_devices, 'device_kind': device_kind,
      'backend': jax.default_backend(), 'compile_s': stats['compile_s'],
      'step_ms': 1e3 * step_s, 'images_per_s': images_per_s,
      'images_per_s_per_device': images_per_s / num_devices, 'flops_per_image': flops_per_image,
      'mfu': mfu, 'peak_memory_bytes': machine.device_peak_memory_bytes(),
      'planned_memory_bytes': stats['planned_memory_bytes'], 'runs_s': times,
      'tensorflow_placeholder': TENSORFLOW_PLACEHOLDER,
  }


def time_train_step(per_device_batch: int, dtype: str, *, depth: int = 50, width: int = 64,
                    image_size: tuple[int, int] = (256, 128), num_classes: int = 380,
                    steps: int = 20, runs: int = 5, warmup: int = 3,
                    trace_dir: str | None = None, trace_steps: int = 3) -> dict[str, Any]:
  """Compiles and times train.py's step for one configuration; returns a result row as a dict."""
  mesh, config, schedule, _, state, batch = _setup(per_device_batch, dtype, depth, width,
                                                   image_size, num_classes)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  # Exactly train.py's jit: same partial, shardings and donation of the state.
  jitted = jax.jit(functools.partial(train.train_step, config=config, schedule=schedule),
                   in_shardings=(replicated, data_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))
  compiled, stats = compile_stats(jitted, state, batch)
  metrics = None

  def step():
    nonlocal state, metrics
    state, metrics = compiled(state, batch)
    return state, metrics

  times = timed_runs(step, steps, runs, warmup)
  row = _row('train', per_device_batch, config.batch_size, dtype, stats, times, steps,
             mesh.devices.size)
  macs = forward_macs_per_image(depth, width, tuple(image_size), num_classes=num_classes)
  row['analytic_flops_per_image'] = 6.0 * macs  # forward + backward: 3 x (2 FLOPs per MAC)
  row['final_loss'] = float(metrics['loss'])
  if trace_dir:
    row['trace'] = trace_steps_to(trace_dir, step, trace_steps)
  return row


def time_embedding(per_device_batch: int, dtype: str, *, depth: int = 50, width: int = 64,
                   image_size: tuple[int, int] = (256, 128), num_classes: int = 380,
                   steps: int = 20, runs: int = 5, warmup: int = 3,
                   trace_dir: str | None = None, trace_steps: int = 3) -> dict[str, Any]:
  """Compiles and times evaluation's embedding step (uint8 batch -> float32 embeddings)."""
  mesh, config, _, model, state, batch = _setup(per_device_batch, dtype, depth, width,
                                                image_size, num_classes)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  batch = {'image': batch['image']}
  embed_fn = train.make_embed_fn(model, mesh, normalize=config.eval.normalize)
  compiled, stats = compile_stats(embed_fn, variables, batch)

  def step():
    return compiled(variables, batch)

  times = timed_runs(step, steps, runs, warmup)
  row = _row('embed', per_device_batch, config.batch_size, dtype, stats, times, steps,
             mesh.devices.size)
  macs = forward_macs_per_image(depth, width, tuple(image_size), num_classes=0)
  row['analytic_flops_per_image'] = 2.0 * macs  # forward only, without the classifier
  if trace_dir:
    row['trace'] = trace_steps_to(trace_dir, step, trace_steps)
  return row


# ---- Profiler trace ----


def trace_steps_to(trace_dir: str, step: Callable[[], Any], steps: int) -> dict[str, Any]:
  """Records `steps` calls of `step` with jax.profiler, copies the files into trace_dir (flat,
  so they survive folder-depth limits) and returns where_time_goes() of the trace.

  A profiler that fails (no CUPTI, say) leaves the timings alone: the error is returned instead.
  """
  os.makedirs(trace_dir, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    try:
      with jax.profiler.trace(tmp):
        for _ in range(steps):
          out = step()
        jax.block_until_ready(out)
    except Exception as e:  # the trace is optional: the timings above stand
      return {'steps': steps, 'files': [], 'error': f'{type(e).__name__}: {e}'}
    files = sorted(glob.glob(os.path.join(tmp, 'plugins', 'profile', '*', '*')))
    copied = []
    for path in files:
      if path.endswith(('.xplane.pb', '.trace.json.gz')):
        copied.append(shutil.copy(path, trace_dir))
  summary = {'steps': steps, 'files': [os.path.basename(p) for p in copied]}
  json_traces = [p for p in copied if p.endswith('.trace.json.gz')]
  if json_traces:
    with gzip.open(json_traces[0]) as f:
      summary.update(where_time_goes(json.load(f), steps))
  return summary


# Kernel and XLA op names -> what they are, first match wins. cuDNN/CUTLASS convolution kernels
# are "xmma"/"implicit_gemm"/"fprop"/"dgrad"/"wgrad"; XLA names fusions by their root op
# ("loop_convert_fusion" is no convolution, hence conv(?!ert)).
CATEGORIES = (
    ('convolution', r'conv(?!ert)|xmma|cudnn|fprop|dgrad|wgrad|implicit_gemm'),
    ('matmul', r'gemm|cublas|cutlass|dot|matmul'),
    ('other custom call', r'custom-call|custom_call'),
    ('collective', r'all-reduce|all_reduce|nccl|all-gather|reduce-scatter'),
    ('reduction fusion', r'reduce'),
    ('copy / transpose', r'copy|transpose|memcpy|memset|dynamic-update-slice|nchwtonhwc'),
    ('elementwise fusion', r'fusion|loop_|elementwise'),
)


def op_category(name: str) -> str:
  """The CATEGORIES entry of a kernel or XLA op name ('other' when none matches)."""
  lower = name.lower()
  for category, pattern in CATEGORIES:
    if re.search(pattern, lower):
      return category
  return 'other'


def where_time_goes(trace: dict[str, Any], steps: int, top: int = 12) -> dict[str, Any]:
  """Busy time, categories and top ops of a Chrome-format trace (jax.profiler's .trace.json.gz).

  On a GPU the device's 'XLA Ops' line is used when the profiler wrote one, else its stream
  (kernel) lines; without a device (CPU) the XLA threads of the host. Busy time is the union of
  the chosen events, so gaps (the device waiting on the host) show as busy < window.
  """
  events = trace.get('traceEvents', [])
  processes, threads = {}, {}
  for e in events:
    if e.get('ph') == 'M' and e.get('name') == 'process_name':
      processes[e.get('pid')] = str(e.get('args', {}).get('name', ''))
    elif e.get('ph') == 'M' and e.get('name') == 'thread_name':
      threads[(e.get('pid'), e.get('tid'))] = str(e.get('args', {}).get('name', ''))
  devices = {pid for pid, name in processes.items() if name.startswith('/device:')}
  if devices:
    lines = {key for key, name in threads.items() if key[0] in devices and name == 'XLA Ops'}
    source = 'device XLA Ops line'
    if not lines:
      lines = {key for key, name in threads.items()
               if key[0] in devices and name.lower().startswith('stream')}
      source = 'device stream (kernel) lines'
  else:
    lines = {key for key, name in threads.items() if 'xla' in name.lower()}
    source = 'host XLA threads (no device in the trace)'
  chosen = [e for e in events if e.get('ph') == 'X' and (e.get('pid'), e.get('tid')) in lines
            and isinstance(e.get('dur'), int | float)]
  if not chosen:
    return {'source': source, 'events': 0}
  spans = sorted((float(e['ts']), float(e['ts']) + float(e['dur'])) for e in chosen)
  busy, end = 0.0, spans[0][0]
  for start, stop in spans:  # union of intervals
    if stop > end:
      busy += stop - max(start, end)
      end = stop
  window = spans[-1][1] - spans[0][0]
  by_name, by_category = collections.Counter(), collections.Counter()
  for e in chosen:
    name = str(e.get('args', {}).get('hlo_op') or e.get('name', '?'))
    by_name[name] += float(e['dur'])
    by_category[op_category(name)] += float(e['dur'])
  total = sum(by_name.values())
  return {
      'source': source, 'events': len(chosen), 'window_ms': window / 1e3,
      'busy_ms': busy / 1e3, 'busy_fraction': busy / window if window else None,
      'ms_per_step': busy / 1e3 / steps,
      'categories': [[c, t / 1e3, t / total] for c, t in by_category.most_common()],
      'top_ops': [[re.sub(r'\s+', ' ', n)[:80], t / 1e3, t / total]
                  for n, t in by_name.most_common(top)],
  }


# ---- Report ----


def _gib(value: float | None) -> str:
  return 'n/a' if value is None else f'{value / 2**30:.2f}'


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown table of result rows (train or embed steps)."""
  lines = ['| step | per-device batch | global batch | dtype | compile (s) | step (ms) | '
           'images/s | images/s/device | GFLOPs/image (XLA) | XLA / hand count | MFU | '
           'peak mem (GiB) | XLA plan (GiB) |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    flops = r['flops_per_image']
    ratio = flops / r['analytic_flops_per_image'] if flops else None
    lines.append('| ' + ' | '.join([
        r['step'], str(r['per_device_batch']), str(r['global_batch']), r['dtype'],
        f"{r['compile_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['images_per_s']:.1f}",
        f"{r['images_per_s_per_device']:.1f}",
        'n/a' if flops is None else f'{flops / 1e9:.3g}',
        'n/a' if ratio is None else f'{ratio:.2f}',
        'n/a' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%",
        _gib(r['peak_memory_bytes']), _gib(r['planned_memory_bytes'])]) + ' |')
  return '\n'.join(lines)


NOTES = ('MFU: against the dense peak (float32 as TF32, JAX\'s default precision). '
         'XLA / hand count: XLA\'s FLOPs over 2 FLOPs per multiply-add of the forward pass, '
         'times 3 for a train step (forward + backward). Peak mem: the device allocator\'s peak; '
         'XLA plan: arguments + outputs + temporaries.')


def trace_summary(trace: dict[str, Any]) -> str:
  """Markdown lines of a where_time_goes() summary."""
  if 'error' in trace:
    return f"The profiler failed: {trace['error']}"
  if not trace.get('events'):
    return f"No events to summarise ({trace.get('source', 'no .trace.json.gz written')})."
  busy = trace['busy_fraction']
  lines = [f"{trace['steps']} traced steps, {trace['source']}: busy {trace['busy_ms']:.1f} ms "
           f"of a {trace['window_ms']:.1f} ms window ({100 * busy:.0f}%; gaps are idle time), "
           f"{trace['ms_per_step']:.2f} busy ms per step; shares below are of the summed event "
           'time.', '',
           '| category | ms | share |', '|---|---|---|']
  lines += [f'| {c} | {ms:.2f} | {100 * share:.1f}% |' for c, ms, share in trace['categories']]
  lines += ['', '| op or kernel | ms | share |', '|---|---|---|']
  lines += [f'| `{name}` | {ms:.2f} | {100 * share:.1f}% |' for name, ms, share in trace['top_ops']]
  return '\n'.join(lines)


def header(command: str, rows: list[dict[str, Any]]) -> str:
  """Machine, software, command and date lines printed above the table."""
  kind = rows[0]['device_kind'] if rows else jax.devices()[0].device_kind
  devices = rows[0]['devices'] if rows else jax.device_count()
  return (f'Device: {devices} × {kind} ({jax.default_backend()}); CPU: {machine.cpu_model()}, '
          f'{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; JAX {jax.__version__}; '
          f'{datetime.datetime.now().isoformat(timespec="minutes")}\nCommand: {command}')


def time_in_subprocess(per_device_batch: int, dtype: str, *, depth: int = 50, width: int = 64,
                       image_size: tuple[int, int] = (256, 128), num_classes: int = 380,
                       steps: int = 20, runs: int = 5, warmup: int = 3, embed: bool = False,
                       trace_dir: str | None = None, trace_steps: int = 3,
                       timeout: float | None = None,
                       env: dict[str, str] | None = None) -> dict[str, Any]:
  """time_train_step (or time_embedding) in a fresh process, with its own device memory and
  peak; returns its row."""
  args = ['--noisolate', f'--per_device_batch={per_device_batch}', f'--dtypes={dtype}',
          f'--depth={depth}', f'--width={width}', f'--image_size={image_size[0]},{image_size[1]}',
          f'--num_classes={num_classes}', f'--steps={steps}', f'--runs={runs}',
          f'--warmup={warmup}', '--embed' if embed else '--noembed']
  if trace_dir:
    args += [f'--trace_dir={trace_dir}', f'--trace_steps={trace_steps}']
  (row,) = machine.run_json('train_step', args, timeout=timeout, env=env)
  return row


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
  if FLAGS.trace_dir and len(configs) > 1:
    raise app.UsageError('--trace_dir traces one configuration: give one batch and one dtype')
  rows = []
  for per_device_batch, dtype in configs:
    settings = dict(depth=FLAGS.depth, width=FLAGS.width, image_size=image_size,
                    num_classes=FLAGS.num_classes, steps=FLAGS.steps, runs=FLAGS.runs,
                    warmup=FLAGS.warmup, trace_dir=FLAGS.trace_dir,
                    trace_steps=FLAGS.trace_steps)
    if FLAGS.isolate and len(configs) > 1:
      row = time_in_subprocess(per_device_batch, dtype, embed=FLAGS.embed, **settings)
    else:
      timer = time_embedding if FLAGS.embed else time_train_step
      row = timer(per_device_batch, dtype, **settings)
    rows.append(row)
    print(f"done: {row['step']} batch {per_device_batch} {dtype}: "
          f"{row['images_per_s']:.1f} images/s", flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(rows, f, indent=1)
  command = 'python benchmarks/train_step.py ' + ' '.join(sys.argv[1:])
  print()
  print(header(command.rstrip(), rows))
  what = 'test-time embedding step' if FLAGS.embed else 'train step'
  print(f'ResNet-{FLAGS.depth} (width {FLAGS.width}) + linear head, {FLAGS.num_classes} classes, '
        f'{image_size[0]}x{image_size[1]}, {what}; median of {FLAGS.runs} runs of {FLAGS.steps} '
        f'steps after {FLAGS.warmup} warm-up steps; random uint8 batches already on the device. '
        f'{NOTES}\n')
  print(table(rows))
  for row in rows:
    if 'trace' in row:
      print(f"\nTrace ({', '.join(row['trace']['files'])} in {FLAGS.trace_dir}):\n")
      print(trace_summary(row['trace']))


if __name__ == '__main__':
  define_flags()
  app.run(main)
