"""What machine a benchmark ran on, and what it may lack: helpers shared by the benchmarks."""

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import types
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
# Set (to 1) to import train.py without TensorFlow even where it is installed, as on the GPU
# machines; benchmarks/gpu.py --dry_run sets it so the CPU tests take the GPU machine's path.
WITHOUT_TENSORFLOW = 'BENCH_WITHOUT_TENSORFLOW'


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def device_peak_memory_bytes() -> int | None:
  """Largest peak_bytes_in_use over JAX's local devices; None where there are no stats (CPU)."""
  import jax

  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats()
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  return max(peaks) if peaks else None


# ---- Machines without TensorFlow ----


class _NoTensorFlow(types.ModuleType):
  """Stands in for `tensorflow` where it is not installed (the GPU machines have no TensorFlow).

  train.py, evaluate.py and input_pipeline.py import TensorFlow at the top for tf.data and
  TensorBoard, and name tf.Tensor in annotations, but the train step, the embedding step and the
  metrics that the benchmarks time never call it. Any attribute resolves; calling one raises,
  except hiding GPUs from TensorFlow, which holds trivially without it.
  """

  NO_OPS = frozenset({'tensorflow.config.set_visible_devices'})

  def __getattr__(self, attr: str) -> Any:
    if attr.startswith('__'):
      raise AttributeError(attr)
    if attr.endswith('Error'):  # `except tf.errors.OpError:` needs an exception class
      value = type(attr, (Exception,), {})
    else:
      value = _NoTensorFlow(f'{self.__name__}.{attr}')
    setattr(self, attr, value)
    return value

  def __call__(self, *args, **kwargs) -> None:
    if self.__name__ in self.NO_OPS:
      return None
    raise RuntimeError(f'{self.__name__}(): TensorFlow is not installed here (benchmarks/'
                       'machine.py put a placeholder in its place for the timed steps only)')


def allow_missing_tensorflow() -> bool:
  """Puts a placeholder `tensorflow` module in sys.modules when TensorFlow is not installed (or
  $BENCH_WITHOUT_TENSORFLOW is 1), so train.py's step can be imported; True if it did."""
  if 'tensorflow' in sys.modules:
    return isinstance(sys.modules['tensorflow'], _NoTensorFlow)
  if os.environ.get(WITHOUT_TENSORFLOW) != '1' and importlib.util.find_spec('tensorflow'):
    return False
  sys.modules['tensorflow'] = _NoTensorFlow('tensorflow')
  return True


# ---- Running a benchmark in a fresh process ----


def run_json(script: str, args: list[str], *, timeout: float | None = None,
             env: dict[str, str] | None = None) -> list[dict[str, Any]]:
  """Runs `python benchmarks/<script>.py <args> --json_out=F` in a fresh process; F's rows.

  A fresh process has its own device memory and peak counter, and keeps PyTorch and JAX apart
  (PyTorch's CUDA build crashes when it runs in a process that has used JAX). Raises RuntimeError
  with the end of stderr on failure, subprocess.TimeoutExpired past `timeout` seconds.
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'rows.json')
    command = [sys.executable, os.path.join(BENCH, f'{script}.py'), *args, f'--json_out={out}']
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
      raise RuntimeError(f'benchmarks/{script}.py {" ".join(args)} failed '
                         f'(exit {result.returncode}):\n{result.stderr[-3000:]}')
    if not os.path.exists(out):
      raise RuntimeError(f'benchmarks/{script}.py {" ".join(args)} wrote no results:\n'
                         f'{result.stdout[-1000:]}')
    with open(out) as f:
      return json.load(f)
