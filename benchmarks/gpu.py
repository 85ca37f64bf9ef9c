"""Every GPU figure in one budgeted call: JAX train step vs PyTorch, test-time embedding, metrics.

  python benchmarks/gpu.py --out=$OUT                   # one H100, ~7.5 min; see BENCHMARKS.md
  python benchmarks/gpu.py --dry_run --out=/tmp/gpu     # CPU, tiny sizes, 2 fake devices (tests)

Orchestrates the other benchmarks, each measurement in a fresh process (its own device memory
and peak, and PyTorch never in a process that has used JAX): benchmarks/train_step.py for
train.py's step (bf16 and fp32 at each per-device batch: images/s, compile time, XLA FLOPs, MFU,
peak memory) and the test-time embedding step, benchmarks/torch_train_step.py for the PyTorch
baseline (eager and torch.compile) and benchmarks/metrics.py for the metrics at N = 20k and 100k.
This process imports JAX but never starts a backend, and never imports PyTorch.

Tasks run in priority order (the first batch size and dtype are compared first, compiles of
other settings later) while their time estimate fits what is left of --budget_s; the rest are
listed as skipped. After every task, gpu.json and gpu.md in --out hold everything so far, and
--profile puts a jax.profiler trace of the first JAX step in --out/trace with a summary of where
its time goes. Needs no TensorFlow (a placeholder stands in for train.py's import) but needs
ml_collections; BENCHMARKS.md has the device command with the wheel to carry.
"""

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS
START = time.monotonic()

# Targets of the JAX bf16 step (issue 14): measured and reported, never asserted.
TARGET_RATIO = 1.25  # JAX / PyTorch + torch.compile images/s
TARGET_MFU = 0.20

# Seconds a task of each kind is expected to take on an H100 before one has run (process start,
# compile, timing); afterwards the last measured wall time of that kind is used.
FIRST_ESTIMATE_S = {'jax': 75.0, 'torch_eager': 75.0, 'torch_compile': 120.0, 'embed': 45.0,
                    'metrics': 40.0}

# --dry_run: tiny sizes on 2 fake CPU devices, for the test suite (flags given explicitly win).
DRY_RUN = {'per_device_batch': ['4'], 'dtypes': ['bfloat16'], 'depth': 18, 'width': 8,
           'image_size': ['32', '16'], 'num_classes': 10, 'steps': 2, 'runs': 2, 'warmup': 1,
           'trace_steps': 2, 'embed_batch': 4, 'metrics_n': ['1000'], 'no_torchvision': True,
           'torch_compile_backend': 'aot_eager'}
DRY_RUN_ENV = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
               machine.WITHOUT_TENSORFLOW: '1', 'TF_CPP_MIN_LOG_LEVEL': '3'}
PARTS = ('jax', 'torch_eager', 'torch_compile', 'embed', 'metrics')


def define_flags() -> None:
  """Declares the command-line flags."""
  flags.DEFINE_string('out', os.environ.get('OUT'), 'Folder for gpu.json, gpu.md and trace/ '
                      '(default: $OUT).')
  flags.DEFINE_bool('overwrite', False, 'Replace gpu.json / gpu.md / trace/ already in --out.')
  flags.DEFINE_float('budget_s', 450.0, 'Start no task whose estimate exceeds the time left.')
  flags.DEFINE_list('per_device_batch', ['128', '256', '64'],
                    'Per-device batch sizes, in priority order (the first is compared first).')
  flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'Dtypes, in priority order.')
  flags.DEFINE_list('parts', list(PARTS), f'Which measurements: {", ".join(PARTS)}.')
  flags.DEFINE_integer('depth', 50, 'ResNet depth.')
  flags.DEFINE_integer('width', 64, 'ResNet base width.')
  flags.DEFINE_list('image_size', ['256', '128'], 'Crop size H,W.')
  flags.DEFINE_integer('num_classes', 380, 'Classifier size (MMDet hard-codes 380 for MOT17).')
  flags.DEFINE_integer('steps', 20, 'Steps per timed window.')
  flags.DEFINE_integer('runs', 5, 'Timed windows (median reported).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_integer('embed_batch', 256, 'Per-device batch of the test-time embedding step.')
  flags.DEFINE_list('metrics_n', ['20000', '100000'], 'Embedding counts for the metrics.')
  flags.DEFINE_integer('metrics_runs', 3, 'Timed runs of the metrics at each N.')
  flags.DEFINE_bool('profile', True, 'Trace the first JAX train step into --out/trace.')
  flags.DEFINE_integer('trace_steps', 3, 'Steps in the trace.')
  flags.DEFINE_string('torch_compile_backend', 'inductor', 'torch.compile backend.')
  flags.DEFINE_bool('no_torchvision', False, "PyTorch: torch.nn ResNet (torchvision's layout).")
  flags.DEFINE_bool('dry_run', False, 'Tiny sizes on 2 fake CPU devices (the test suite runs '
                    'this); flags given explicitly still apply.')


# ---- Plan ----


@dataclasses.dataclass
class Task:
  """One measurement in a fresh process: run(timeout) returns its rows."""
  name: str
  kind: str  # a FIRST_ESTIMATE_S key
  section: str  # where its rows go in the results: jax_train, torch, embed, metrics
  run: Callable[[float], list[dict[str, Any]]]
  skip: str | None = None  # why it cannot run at all (torch missing, say)


def plan(batches: list[int], dtypes: list[str], parts: list[str], metrics_n: list[int],
         make: Callable[[str, str | None, int | None], Task]) -> list[Task]:
  """Tasks in priority order: the first (batch, dtype) for JAX and torch.compile, eager for all,
  the other dtypes at the first batch, embedding and metrics (one task per N, so a slow large N
  costs only itself), then the remaining batch sizes (JAX next to torch.compile for the first
  dtype), torch.compile of the other dtypes last. `make(kind, dtype, batch or N)` builds each."""
  b0, d0 = batches[0], dtypes[0]
  order = [('jax', d0, b0), ('torch_compile', d0, b0), ('torch_eager', None, None)]
  order += [('jax', d, b0) for d in dtypes[1:]]
  order += [('embed', d0, None)] + [('metrics', None, n) for n in metrics_n]
  for b in batches[1:]:
    order += [('jax', d0, b), ('torch_compile', d0, b)]
  order += [('jax', d, b) for d in dtypes[1:] for b in batches[1:]]
  order += [('torch_compile', d, b) for d in dtypes[1:] for b in batches]
  order += [('embed', d, None) for d in dtypes[1:]]
  return [make(kind, dtype, batch) for kind, dtype, batch in order if kind in parts]


def run_tasks(tasks: list[Task], budget_s: float,
              on_done: Callable[[list[dict[str, Any]]], None],
              clock: Callable[[], float] = time.monotonic,
              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the tasks that fit the budget, in order; returns one record per task with its rows.

  A task starts only if its kind's estimate (the last wall time of that kind, else
  FIRST_ESTIMATE_S) fits the time left, and is stopped when the budget runs out. A failed task
  is recorded with the end of its error and the next one starts. on_done(records so far) runs
  after each task that ran.
  """
  start = clock()
  estimates = dict(FIRST_ESTIMATE_S)
  records = []
  for task in tasks:
    left = budget_s - (clock() - start)
    record = {'name': task.name, 'kind': task.kind, 'section': task.section,
              'estimate_s': estimates[task.kind], 'wall_s': None, 'rows': [], 'note': ''}
    records.append(record)
    if task.skip:
      record.update(status='skipped', note=task.skip)
      continue
    if estimates[task.kind] > left:
      record.update(status='skipped', note=f'budget: needs ~{estimates[task.kind]:.0f} s, '
                    f'{max(left, 0):.0f} s left')
      log(f'[{clock() - start:5.0f} s] skip {task.name}: {record["note"]}')
      continue
    log(f'[{clock() - start:5.0f} s] {task.name} (estimate {estimates[task.kind]:.0f} s, '
        f'{left:.0f} s left)')
    began = clock()
    try:
      record['rows'] = task.run(max(left, 30.0))
      record['status'] = 'ok'
    except subprocess.TimeoutExpired:
      record.update(status='timed out', note=f'stopped after {clock() - began:.0f} s (budget)')
    except RuntimeError as e:
      lines = [line for line in str(e).strip().splitlines() if line.strip()]
      record.update(status='failed', note=lines[-1][:300] if lines else 'failed')
      log(str(e))
    record['wall_s'] = clock() - began
    if record['status'] == 'ok':
      estimates[task.kind] = record['wall_s']
    log(f'[{clock() - start:5.0f} s] {task.name}: {record["status"]} in {record["wall_s"]:.0f} s'
        + ''.join(f'; {summary(r)}' for r in record['rows']))
    on_done(records)
  return records


def summary(row: dict[str, Any]) -> str:
  """One row in a few words, for the progress lines."""
  if 'n' in row:
    return f"N={row['n']}: {row['median_s']:.2f} s"
  rate = row.get('images_per_s_per_device', row['images_per_s'])
  mfu = row.get('mfu')
  name = row.get('mode', row.get('step'))
  return (f"{name} {row['dtype']} batch {row['per_device_batch']}: {rate:.1f} images/s"
          + ('' if mfu is None else f', MFU {100 * mfu:.1f}%'))


# ---- Results ----


def comparison(jax_rows: list[dict[str, Any]],
               torch_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per (batch, dtype) with a JAX row: JAX images/s per device, torch's, and the ratios."""
  torch_by = {(r['per_device_batch'], r['dtype'], r['mode']): r['images_per_s']
              for r in torch_rows}
  out = []
  for j in jax_rows:
    entry = {'per_device_batch': j['per_device_batch'], 'dtype': j['dtype'],
             'jax_images_per_s_per_device': j['images_per_s_per_device'], 'jax_mfu': j['mfu']}
    for mode in ('eager', 'compile'):
      rate = torch_by.get((j['per_device_batch'], j['dtype'], mode))
      entry[f'torch_{mode}_images_per_s'] = rate
      entry[f'jax_over_torch_{mode}'] = j['images_per_s_per_device'] / rate if rate else None
    out.append(entry)
  return out


def targets(compared: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The issue's bf16 targets per batch size: JAX / torch.compile and MFU, met or not."""
  out = []
  for c in compared:
    if c['dtype'] != 'bfloat16':
      continue
    for what, value, goal in (('JAX / torch.compile images/s', c['jax_over_torch_compile'],
                               TARGET_RATIO), ('JAX MFU', c['jax_mfu'], TARGET_MFU)):
      out.append({'target': what, 'per_device_batch': c['per_device_batch'], 'value': value,
                  'goal': goal, 'met': None if value is None else value >= goal})
  return out


def versions() -> dict[str, str]:
  """Installed versions of the packages the figures depend on (read without importing them)."""
  names = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax',
           'orbax-checkpoint', 'numpy', 'torch', 'torchvision')
  found = {}
  for name in names:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def gpu_info() -> str | None:
  """nvidia-smi's name, driver and memory of each GPU, or None without nvidia-smi."""
  if not shutil.which('nvidia-smi'):
    return None
  result = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                           '--format=csv,noheader'], capture_output=True, text=True, timeout=30)
  return result.stdout.strip().replace('\n', '; ') or None


def jax_backend(timeout: float = 120.0) -> str:
  """JAX's default backend, asked in a child process so this one never holds the GPU."""
  result = subprocess.run([sys.executable, '-c', 'import jax; print(jax.default_backend())'],
                          capture_output=True, text=True, timeout=timeout)
  if result.returncode != 0:
    raise app.UsageError(f'JAX does not start: {result.stderr.strip().splitlines()[-1:]}')
  return result.stdout.strip().splitlines()[-1]


def _fmt(value: float | None, spec: str, suffix: str = '') -> str:
  return 'n/a' if value is None else f'{value:{spec}}{suffix}'


def markdown(results: dict[str, Any], train_step: Any, torch_train_step: Any,
             bench_metrics: Any) -> str:
  """gpu.md: the tables of every part, the targets, the trace summary and the task log."""
  s = results['settings']
  info = results['machine']
  soft = ', '.join(f'{k} {v}' for k, v in info['versions'].items())
  h, w = s['image_size']
  lines = [
      '# GPU benchmarks (`benchmarks/gpu.py`)', '',
      f"GPU: {info['gpu'] or 'none found (nvidia-smi)'}; JAX backend {info['jax_backend']}; "
      f"CPU: {info['cpu']}, {info['cpu_count']} cores; Python {info['python']}; {soft}; "
      f"{results['started']}.", '',
      f"Command: `{results['command']}`", '',
      f"Budget {s['budget_s']:.0f} s, used {results['elapsed_s']:.0f} s. ResNet-{s['depth']} "
      f"(width {s['width']}) + linear head, {s['num_classes']} classes, {h}×{w}; median of "
      f"{s['runs']} windows of {s['steps']} steps after {s['warmup']} warm-up steps; random uint8 "
      'batches already on the device. One process per measurement.', '']
  jax_rows = sorted(results['jax_train'], key=lambda r: (r['dtype'], r['per_device_batch']))
  lines += ["## 1. JAX train step (train.py's step, shardings and donation)", '']
  lines += [train_step.table(jax_rows), '', train_step.NOTES, ''] if jax_rows else ['Not run.', '']
  torch_rows = sorted(results['torch'],
                      key=lambda r: (r['dtype'], r['per_device_batch'], r['mode']))
  lines += ['## 2. PyTorch baseline (the same ResNet + MMDet head, CE + batch-hard triplet, SGD; '
            'AMP bf16, channels_last; eager and torch.compile)', '']
  if torch_rows:
    lines += [torch_train_step.torch_table(torch_rows), '', 'JAX / PyTorch per setting (JAX '
              'images/s per device):', '',
              torch_train_step.compare_table(jax_rows, torch_rows, ['eager', 'compile']), '']
  else:
    lines += ['Not run.', '']
  lines += ['## Targets (bf16, measured, not asserted)', '', '| target | per-device batch | value '
            '| goal | met |', '|---|---|---|---|---|']
  for t in results['targets']:
    ratio = t['target'].startswith('JAX /')
    value = _fmt(t['value'], '.2f', '×') if ratio else _fmt(
        None if t['value'] is None else 100 * t['value'], '.1f', '%')
    goal = f"{t['goal']:.2f}×" if ratio else f"{100 * t['goal']:.0f}%"
    met = 'n/a' if t['met'] is None else ('yes' if t['met'] else '**no**')
    lines.append(f"| {t['target']} | {t['per_device_batch']} | {value} | {goal} | {met} |")
  behind = any(t['met'] is False for t in results['targets'])
  lines.append('')
  if results['trace']:
    trace = results['trace']
    lines += [f"## Where the JAX step's time goes (trace of {trace['config']}; files in trace/: "
              f"{', '.join(trace['files']) or 'none'})", '']
    if behind:
      lines += ['JAX is behind a target in this run; the trace shows where its step time goes.',
                '']
    lines += [train_step.trace_summary(trace), '']
  embed_rows = sorted(results['embed'], key=lambda r: r['dtype'])
  lines += ['## 3. Test time: embedding step and metrics', '']
  lines += ([train_step.table(embed_rows), ''] if embed_rows else ['Embedding: not run.', ''])
  lines += ([bench_metrics.table(results['metrics']), '', 'Metrics: mAP + CMC + mINP, all-vs-all, '
             f"D = 128, ~N/20 identities, median of {s['metrics_runs']} runs after a first call "
             '(compile included in the first).', '']
            if results['metrics'] else ['Metrics: not run.', ''])
  lines += ['## Tasks (priority order)', '', '| task | status | estimate (s) | wall (s) | note |',
            '|---|---|---|---|---|']
  for t in results['tasks']:
    lines.append(f"| {t['name']} | {t['status']} | {t['estimate_s']:.0f} | "
                 f"{_fmt(t['wall_s'], '.0f')} | {t['note']} |")
  return '\n'.join(lines) + '\n'


def write_atomically(path: str, text: str) -> None:
  """Writes via a temporary file and a rename, so a stopped run never leaves half a file."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


# ---- Main ----


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.dry_run:
    for name, value in DRY_RUN.items():
      if not FLAGS[name].present:
        FLAGS[name].value = value
    os.environ.update(DRY_RUN_ENV)  # before JAX is imported, here and in every child
  if not FLAGS.out:
    raise app.UsageError('give --out=FOLDER or set $OUT')
  unknown = set(FLAGS.parts) - set(PARTS)
  if unknown:
    raise app.UsageError(f'--parts: unknown {sorted(unknown)} (known: {", ".join(PARTS)})')
  for dtype in FLAGS.dtypes:
    if dtype not in ('bfloat16', 'float32'):
      raise app.UsageError(f'--dtypes: unknown dtype {dtype!r} (bfloat16, float32)')
  if len(FLAGS.image_size) != 2:
    raise app.UsageError(f'--image_size needs H,W, got {",".join(FLAGS.image_size)}')
  for name in ('per_device_batch', 'metrics_n', 'image_size'):
    if not FLAGS[name].value or not all(v.isdigit() and int(v) > 0 for v in FLAGS[name].value):
      raise app.UsageError(f'--{name} needs positive integers, got {",".join(FLAGS[name].value)}')
  if importlib.util.find_spec('ml_collections') is None:
    raise app.UsageError('ml_collections is not installed: carry its wheel (BENCHMARKS.md, '
                         '"One call on a GPU")')
  out = os.path.abspath(FLAGS.out)
  outputs = [os.path.join(out, name) for name in ('gpu.json', 'gpu.md', 'trace')]
  if not FLAGS.overwrite and any(os.path.exists(p) for p in outputs):
    raise app.UsageError(f'{out} already holds gpu.json, gpu.md or trace/ (--overwrite replaces '
                         'them)')
  backend = 'cpu' if FLAGS.dry_run else jax_backend()
  if backend == 'cpu' and not FLAGS.dry_run:
    raise app.UsageError('JAX sees no GPU here (backend cpu): run with --dry_run on a CPU')
  os.makedirs(out, exist_ok=True)
  if os.path.isdir(outputs[2]):
    shutil.rmtree(outputs[2])

  # Imported only now: --dry_run's environment must be in place first. None of these starts a
  # JAX backend or imports PyTorch in this process.
  from benchmarks import metrics as bench_metrics
  from benchmarks import torch_train_step, train_step

  batches = [int(b) for b in FLAGS.per_device_batch]
  settings = dict(depth=FLAGS.depth, width=FLAGS.width,
                  image_size=tuple(int(v) for v in FLAGS.image_size),
                  num_classes=FLAGS.num_classes, steps=FLAGS.steps, runs=FLAGS.runs,
                  warmup=FLAGS.warmup)
  torch_missing = None
  if importlib.util.find_spec('torch') is None:
    torch_missing = 'torch not installed'
  elif not FLAGS.no_torchvision and importlib.util.find_spec('torchvision') is None:
    torch_missing = 'torchvision not installed (--no_torchvision builds the same ResNet)'
  trace_dir = outputs[2] if FLAGS.profile else None

  def make(kind: str, dtype: str | None, batch: int | None) -> Task:
    if kind == 'jax':
      trace = trace_dir if (batch, dtype) == (batches[0], FLAGS.dtypes[0]) else None
      return Task(f'JAX train {dtype} batch {batch}' + (' + trace' if trace else ''), kind,
                  'jax_train', lambda timeout: [train_step.time_in_subprocess(
                      batch, dtype, trace_dir=trace, trace_steps=FLAGS.trace_steps,
                      timeout=timeout, **settings)])
    if kind == 'embed':
      return Task(f'JAX embedding {dtype} batch {FLAGS.embed_batch}', kind, 'embed',
                  lambda timeout: [train_step.time_in_subprocess(
                      FLAGS.embed_batch, dtype, embed=True, timeout=timeout, **settings)])
    if kind == 'metrics':
      return Task(f'metrics N={batch}', kind, 'metrics',
                  lambda timeout: bench_metrics.time_in_subprocess(
                      [batch], runs=FLAGS.metrics_runs, single_run_above=batch, timeout=timeout))
    torch_settings = dict(use_torchvision=not FLAGS.no_torchvision,
                          compile_backend=FLAGS.torch_compile_backend, **settings)
    if kind == 'torch_eager':
      return Task('PyTorch eager, every batch and dtype', kind, 'torch',
                  lambda timeout: torch_train_step.time_in_subprocess(
                      batches, FLAGS.dtypes, ['eager'], timeout=timeout, **torch_settings),
                  skip=torch_missing)
    return Task(f'PyTorch compile {dtype} batch {batch}', kind, 'torch',
                lambda timeout: torch_train_step.time_in_subprocess(
                    [batch], [dtype], ['compile'], timeout=timeout, **torch_settings),
                skip=torch_missing)

  results = {
      'command': 'python benchmarks/gpu.py ' + ' '.join(sys.argv[1:]),
      'started': datetime.datetime.now().isoformat(timespec='minutes'),
      'settings': {**settings, 'per_device_batch': batches, 'dtypes': FLAGS.dtypes,
                   'budget_s': FLAGS.budget_s, 'parts': FLAGS.parts,
                   'embed_batch': FLAGS.embed_batch, 'metrics_n': FLAGS.metrics_n,
                   'metrics_runs': FLAGS.metrics_runs, 'dry_run': FLAGS.dry_run,
                   'torch_compile_backend': FLAGS.torch_compile_backend},
      'machine': {'gpu': gpu_info(), 'jax_backend': backend, 'cpu': machine.cpu_model(),
                  'cpu_count': os.cpu_count(), 'python': platform.python_version(),
                  'versions': versions()},
  }

  def write(records: list[dict[str, Any]]) -> None:
    rows = {section: [r for t in records if t['section'] == section for r in t['rows']]
            for section in ('jax_train', 'torch', 'embed', 'metrics')}
    traced = [r for r in rows['jax_train'] if 'trace' in r]
    compared = comparison(rows['jax_train'], rows['torch'])
    results.update(rows, comparison=compared, targets=targets(compared),
                   elapsed_s=time.monotonic() - START,
                   tasks=[{k: v for k, v in t.items() if k != 'rows'} for t in records])
    results['trace'] = None
    if traced:
      row = traced[0]
      results['trace'] = {**row['trace'],
                          'config': f"train {row['dtype']} batch {row['per_device_batch']}"}
    write_atomically(os.path.join(out, 'gpu.json'), json.dumps(results, indent=1) + '\n')
    write_atomically(os.path.join(out, 'gpu.md'),
                     markdown(results, train_step, torch_train_step, bench_metrics))

  tasks = plan(batches, FLAGS.dtypes, FLAGS.parts, [int(n) for n in FLAGS.metrics_n], make)
  budget = FLAGS.budget_s - (time.monotonic() - START)
  write(run_tasks(tasks, budget, write))
  with open(os.path.join(out, 'gpu.md')) as f:
    print('\n' + f.read())
  failed = [t['name'] for t in results['tasks'] if t['status'] in ('failed', 'timed out')]
  if failed:
    print(f'failed: {", ".join(failed)}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
