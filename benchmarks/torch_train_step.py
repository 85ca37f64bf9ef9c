"""PyTorch baseline: MMDet's ReID train step (torchvision ResNet-50 + linear head) in images/s.

  python benchmarks/torch_train_step.py                    # eager and torch.compile, bf16 and fp32
  python benchmarks/torch_train_step.py --compare          # also benchmarks/train_step.py, ratio
  python benchmarks/torch_train_step.py --no_torchvision --depth=18 --width=8 --image_size=32,16
  python benchmarks/gpu.py                                 # both on a GPU, budgeted, one call

The step is MMDet's recipe: ResNet (torchvision layout, last stride 2) -> global average pool ->
FC 2048->1024 + BN1d + ReLU -> FC 1024->128 (embedding); BN1d(128) -> Linear(num_classes);
cross-entropy + batch-hard triplet (Euclidean, margin 0.3); SGD lr 0.1, momentum 0.9, weight decay
1e-4. bfloat16 runs under torch.autocast, float32 allows TF32 (as JAX's default precision does);
channels_last; cuDNN autotuning on (as XLA autotunes); torch.compile with static shapes; random
uint8 batches already on the device, normalised inside the step like ours. One device only: the
JAX figure it is compared with is images/s per device. PyTorch never shares a process with JAX
here (its CUDA build crashes in a process that has used JAX): --compare runs JAX's benchmark in
child processes first.
"""

import datetime
import importlib.util
import json
import os
import statistics
import sys
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script)."""
  flags.DEFINE_list('per_device_batch', ['32', '64', '128'], 'Batch sizes to time.')
  flags.DEFINE_list('dtypes', ['bfloat16', 'float32'], 'bfloat16 (autocast) and/or float32.')
  flags.DEFINE_list('modes', ['eager', 'compile'], 'eager and/or compile (torch.compile).')
  flags.DEFINE_integer('depth', 50, 'ResNet depth.')
  flags.DEFINE_integer('width', 64, 'ResNet base width (not 64 needs --no_torchvision).')
  flags.DEFINE_list('image_size', ['256', '128'], 'Crop size H,W.')
  flags.DEFINE_integer('num_classes', 380, 'Classifier size (MMDet hard-codes 380 for MOT17).')
  flags.DEFINE_integer('steps', 20, 'Steps per timed run.')
  flags.DEFINE_integer('runs', 5, 'Timed runs (median reported).')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps first (they include torch.compile).')
  flags.DEFINE_bool('no_torchvision', False,
                    'Build the ResNet from torch.nn here (same layout) instead of torchvision.')
  flags.DEFINE_string('compile_backend', 'inductor',
                      'torch.compile backend (aot_eager: no code generation, for quick checks).')
  flags.DEFINE_bool('compare', False,
                    'Also time benchmarks/train_step.py (JAX), same settings; print the ratios.')
  flags.DEFINE_string('json_out', None, 'Also write the torch rows as JSON to this file.')


# ---- Model (needs torch; imported lazily so the script can say "skipped") ----


def build_resnet(depth: int, width: int) -> Any:
  """torchvision-layout ResNet without avgpool/fc, built from torch.nn (--no_torchvision)."""
  import torch
  from torch import nn

  layouts = {18: ('basic', (2, 2, 2, 2)), 34: ('basic', (3, 4, 6, 3)),
             50: ('bottleneck', (3, 4, 6, 3)), 101: ('bottleneck', (3, 4, 23, 3)),
             152: ('bottleneck', (3, 8, 36, 3))}
  kind, blocks_per_stage = layouts[depth]
  expansion = 4 if kind == 'bottleneck' else 1

  def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)

  class Block(nn.Module):
    """torchvision BasicBlock / Bottleneck (v1.5: stride on the 3x3 conv)."""

    def __init__(self, cin: int, planes: int, stride: int):
      super().__init__()
      cout = planes * expansion
      if kind == 'basic':
        convs = [conv(cin, planes, 3, stride), conv(planes, planes, 3)]
      else:
        convs = [conv(cin, planes, 1), conv(planes, planes, 3, stride), conv(planes, cout, 1)]
      self.num_convs = len(convs)
      for index, c in enumerate(convs, 1):  # torchvision's names: conv1, bn1, conv2, ...
        self.add_module(f'conv{index}', c)
        self.add_module(f'bn{index}', nn.BatchNorm2d(c.out_channels))
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      y = x
      for index in range(1, self.num_convs + 1):
        y = getattr(self, f'bn{index}')(getattr(self, f'conv{index}')(y))
        if index < self.num_convs:
          y = torch.relu(y)
      shortcut = x if self.downsample is None else self.downsample(x)
      return torch.relu(y + shortcut)

  class ResNet(nn.Module):
    """torchvision's module names (conv1, bn1, layer1.0.conv1, ...), so state dicts match."""

    def __init__(self):
      super().__init__()
      self.conv1, self.bn1 = conv(3, width, 7, 2), nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      channels = width
      for stage, num_blocks in enumerate(blocks_per_stage):
        blocks = []
        for index in range(num_blocks):
          blocks.append(Block(channels, width * 2**stage, 2 if stage > 0 and index == 0 else 1))
          channels = width * 2**stage * expansion
        self.add_module(f'layer{stage + 1}', nn.Sequential(*blocks))
      self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      return self.layer4(self.layer3(self.layer2(self.layer1(x))))

  model = ResNet()
  for module in model.modules():  # torchvision's init
    if isinstance(module, nn.Conv2d):
      nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
  return model


def torchvision_resnet(depth: int) -> Any:
  """torchvision.models.resnet{depth}, random init, without avgpool/fc."""
  import torchvision
  from torch import nn

  full = getattr(torchvision.models, f'resnet{depth}')(weights=None)
  backbone = nn.Sequential(*list(full.children())[:-2])
  backbone.out_channels = full.fc.in_features
  return backbone


def build_model(backbone: Any, num_classes: int) -> Any:
  """Backbone -> global average pool -> MMDet's LinearReIDHead; forward returns (emb, logits)."""
  from torch import nn

  class ReIDModel(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = backbone
      self.fc_hidden = nn.Linear(backbone.out_channels, 1024)
      self.bn_hidden = nn.BatchNorm1d(1024)
      self.fc_embed = nn.Linear(1024, 128)
      self.bn_embed = nn.BatchNorm1d(128)
      self.classifier = nn.Linear(128, num_classes)
      for layer in (self.fc_hidden, self.fc_embed, self.classifier):  # MMDet: N(0, 0.01), 0
        nn.init.normal_(layer.weight, 0, 0.01)
        nn.init.zeros_(layer.bias)

    def forward(self, x):
      pooled = self.backbone(x).mean(dim=(2, 3))
      embedding = self.fc_embed(self.bn_hidden(self.fc_hidden(pooled)).relu())
      return embedding, self.classifier(self.bn_embed(embedding))

  return ReIDModel()


def reid_loss(embedding: Any, logits: Any, labels: Any, margin: float = 0.3) -> Any:
  """Cross-entropy + batch-hard triplet on Euclidean distances (MMDet's TripletLoss)."""
  import torch

  ce = torch.nn.functional.cross_entropy(logits.float(), labels)
  x = embedding.float()
  sq = (x * x).sum(1)
  dist = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  hardest_positive = dist.masked_fill(~same, float('-inf')).amax(1)
  hardest_negative = dist.masked_fill(same, float('inf')).amin(1)
  return ce + torch.relu(hardest_positive - hardest_negative + margin).mean()


# ---- Timing ----


def time_torch_step(per_device_batch: int, dtype: str, mode: str, *, depth: int = 50,
                    width: int = 64, image_size: tuple[int, int] = (256, 128),
                    num_classes: int = 380, steps: int = 20, runs: int = 5, warmup: int = 3,
                    use_torchvision: bool = True,
                    compile_backend: str = 'inductor') -> dict[str, Any]:
  """Builds the model and optimizer, times `steps` training steps `runs` times; returns a row."""
  import torch

  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  torch.manual_seed(0)
  if device.type == 'cuda':  # like JAX's default precision: float32 convs/matmuls as TF32
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision('high')
    torch.backends.cudnn.benchmark = True  # XLA autotunes its convolutions too
  backbone = torchvision_resnet(depth) if use_torchvision else build_resnet(depth, width)
  model = build_model(backbone, num_classes).to(device).to(memory_format=torch.channels_last)
  model.train()
  kwargs = {'fused': True} if device.type == 'cuda' else {}
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                              **kwargs)
  mean = torch.tensor(IMAGENET_MEAN_RGB, device=device).view(1, 3, 1, 1)
  inv_std = 1.0 / torch.tensor(IMAGENET_STD_RGB, device=device).view(1, 3, 1, 1)
  bf16 = dtype == 'bfloat16'

  def forward_loss(images, labels):
    x = (images.float() - mean) * inv_std
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      embedding, logits = model(x)
    return reid_loss(embedding, logits, labels)

  loss_fn = forward_loss
  if mode == 'compile':  # static shapes: one graph per batch size, as XLA compiles
    loss_fn = torch.compile(forward_loss, backend=compile_backend, dynamic=False)

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(images, labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  def sync():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  generator = torch.Generator().manual_seed(0)
  h, w = image_size
  images = torch.randint(0, 256, (per_device_batch, 3, h, w), dtype=torch.uint8,
                         generator=generator).to(device).contiguous(
                             memory_format=torch.channels_last)
  labels = ((torch.arange(per_device_batch) // 4) % num_classes).to(device)
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  loss = step(images, labels)
  sync()
  first_step_s = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    loss = step(images, labels)
  sync()
  loss_after_warmup = float(loss)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    for _ in range(steps):
      loss = step(images, labels)
    sync()
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times) / steps
  peak = torch.cuda.max_memory_allocated() if device.type == 'cuda' else None
  name = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
  return {
      'per_device_batch': per_device_batch, 'dtype': dtype, 'mode': mode, 'device': name,
      'model': 'torchvision' if use_torchvision else 'hand-built (--no_torchvision)',
      'compile_backend': compile_backend if mode == 'compile' else None,
      'torch': torch.__version__,
      'first_step_s': first_step_s, 'step_ms': 1e3 * step_s,
      'images_per_s': per_device_batch / step_s, 'peak_memory_bytes': peak,
      'loss_after_warmup': loss_after_warmup, 'runs_s': times,
  }


# ---- Report ----


def _gib(value: float | None) -> str:
  return 'n/a' if value is None else f'{value / 2**30:.2f}'


def torch_table(rows: list[dict[str, Any]]) -> str:
  """Markdown table of torch result rows."""
  lines = ['| batch | dtype | mode | model | first step (s) | step (ms) | images/s | '
           'peak mem (GiB) |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['per_device_batch']} | {r['dtype']} | {r['mode']} | {r['model']} | "
                 f"{r['first_step_s']:.1f} | {r['step_ms']:.1f} | {r['images_per_s']:.1f} | "
                 f"{_gib(r['peak_memory_bytes'])} |")
  return '\n'.join(lines)


def compare_table(jax_rows: list[dict[str, Any]], torch_rows: list[dict[str, Any]],
                  modes: list[str]) -> str:
  """JAX images/s per device next to each torch mode, with JAX / torch ratios ('not run' where a
  torch row is missing)."""
  by_key = {(r['per_device_batch'], r['dtype'], r['mode']): r for r in torch_rows}
  head = ['batch', 'dtype', 'JAX images/s/device']
  for mode in modes:
    head += [f'torch {mode} images/s', f'JAX / torch {mode}']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for j in jax_rows:
    cells = [str(j['per_device_batch']), j['dtype'], f"{j['images_per_s_per_device']:.1f}"]
    for mode in modes:
      t = by_key.get((j['per_device_batch'], j['dtype'], mode))
      if t is None:
        cells += ['not run', '-']
      else:
        cells += [f"{t['images_per_s']:.1f}",
                  f"{j['images_per_s_per_device'] / t['images_per_s']:.2f}×"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def settings_args(settings: dict[str, Any]) -> list[str]:
  """Command-line flags for `settings`; train_step.py takes the same names."""
  h, w = settings['image_size']
  return [f"--depth={settings['depth']}", f"--width={settings['width']}", f'--image_size={h},{w}',
          f"--num_classes={settings['num_classes']}", f"--steps={settings['steps']}",
          f"--runs={settings['runs']}", f"--warmup={settings['warmup']}"]


def time_in_subprocess(per_device_batches: list[int], dtypes: list[str], modes: list[str], *,
                       depth: int = 50, width: int = 64, image_size: tuple[int, int] = (256, 128),
                       num_classes: int = 380, steps: int = 20, runs: int = 5, warmup: int = 3,
                       use_torchvision: bool = True, compile_backend: str = 'inductor',
                       timeout: float | None = None,
                       env: dict[str, str] | None = None) -> list[dict[str, Any]]:
  """time_torch_step for every (batch, dtype, mode) in one fresh process; its rows."""
  settings = dict(depth=depth, width=width, image_size=image_size, num_classes=num_classes,
                  steps=steps, runs=runs, warmup=warmup)
  args = [f"--per_device_batch={','.join(str(b) for b in per_device_batches)}",
          f"--dtypes={','.join(dtypes)}", f"--modes={','.join(modes)}",
          f'--compile_backend={compile_backend}', *settings_args(settings)]
  if not use_torchvision:
    args.append('--no_torchvision')
  return machine.run_json('torch_train_step', args, timeout=timeout, env=env)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  skipped = None
  use_torchvision = not FLAGS.no_torchvision
  if importlib.util.find_spec('torch') is None:
    skipped = 'skipped: torch not installed'
  elif use_torchvision and importlib.util.find_spec('torchvision') is None:
    skipped = ('skipped: torchvision not installed (--no_torchvision builds the same ResNet from '
               'torch.nn instead)')
  if skipped:
    print(skipped)
    if FLAGS.json_out:
      with open(FLAGS.json_out, 'w') as f:
        json.dump([], f)
    return
  if use_torchvision and FLAGS.width != 64:
    raise app.UsageError('--width other than 64 needs --no_torchvision')
  if len(FLAGS.image_size) != 2:
    raise app.UsageError(f'--image_size needs H,W, got {",".join(FLAGS.image_size)}')
  for mode in FLAGS.modes:
    if mode not in ('eager', 'compile'):
      raise app.UsageError(f'--modes: unknown mode {mode!r} (eager, compile)')
  for dtype in FLAGS.dtypes:
    if dtype not in ('float32', 'bfloat16'):
      raise app.UsageError(f'--dtypes: unknown dtype {dtype!r} (float32, bfloat16)')

  settings = dict(depth=FLAGS.depth, width=FLAGS.width,
                  image_size=tuple(int(v) for v in FLAGS.image_size),
                  num_classes=FLAGS.num_classes, steps=FLAGS.steps, runs=FLAGS.runs,
                  warmup=FLAGS.warmup)
  configs = [(int(b), d) for b in FLAGS.per_device_batch for d in FLAGS.dtypes]
  jax_rows = []
  if FLAGS.compare:
    # JAX first, in child processes (train_step.py isolates each configuration): this process
    # has not touched CUDA yet, and never imports JAX.
    jax_rows = machine.run_json('train_step', [
        f'--per_device_batch={",".join(FLAGS.per_device_batch)}',
        f'--dtypes={",".join(FLAGS.dtypes)}', *settings_args(settings)])
    for row in jax_rows:
      print(f"done: JAX batch {row['per_device_batch']} {row['dtype']}: "
            f"{row['images_per_s_per_device']:.1f} images/s/device", flush=True)
  import torch

  torch_rows = []
  for per_device_batch, dtype in configs:
    for mode in FLAGS.modes:
      row = time_torch_step(per_device_batch, dtype, mode, use_torchvision=use_torchvision,
                            compile_backend=FLAGS.compile_backend, **settings)
      torch_rows.append(row)
      print(f"done: torch batch {per_device_batch} {dtype} {mode}: "
            f"{row['images_per_s']:.1f} images/s", flush=True)
      torch._dynamo.reset()
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(torch_rows, f, indent=1)

  device = torch_rows[0]['device'] if torch_rows else 'none'
  print(f'\nDevice: {device}; CPU threads: {torch.get_num_threads()}; torch {torch.__version__}; '
        f'load average {os.getloadavg()[0]:.1f}; '
        f'{datetime.datetime.now().isoformat(timespec="minutes")}')
  print('Command: python benchmarks/torch_train_step.py ' + ' '.join(sys.argv[1:]))
  model = 'torchvision' if use_torchvision else 'hand-built torch.nn (--no_torchvision)'
  h, w = settings['image_size']
  print(f'ResNet-{FLAGS.depth} (width {FLAGS.width}, {model}) + MMDet linear head, '
        f'{FLAGS.num_classes} classes, {h}x{w}; median of {FLAGS.runs} runs of {FLAGS.steps} '
        f'steps after {FLAGS.warmup} warm-up steps.\n')
  print(torch_table(torch_rows))
  if jax_rows:
    print(f"\nJAX: {jax_rows[0]['devices']} × {jax_rows[0]['device_kind']}, per-device figures "
          '(benchmarks/train_step.py, each configuration in a fresh process).\n')
    print(compare_table(jax_rows, torch_rows, FLAGS.modes))


if __name__ == '__main__':
  define_flags()
  app.run(main)
