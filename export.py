"""Exports a trained workdir to ONNX for trackers (BoxMOT, StrongSORT, DeepSORT-style ReID).

    python export.py --workdir=runs/mot17 --output=reid.onnx [--checkpoint=best]
        [--normalize=true] [--opset=17] [--overwrite]

The graph takes `images` (N x 3 x H x W float32, RGB, ImageNet-normalised, N dynamic) and returns
`output` (N x D float32, L2-normalised unless --normalize=false). Two sidecars go next to it:
`reid.json` records the preprocessing, the embedding size, where the weights came from and the
appearance-distance calibration; `reid.onnx.metadata.json` is the one BoxMOT reads (its crop size:
without it BoxMOT's OpenCV-DNN backend feeds 256x128 crops to any model, silently).

Calibration (--calibrate, on by default): the val list's crops are embedded, and the cosine
distances a tracker's appearance gate sees are summarised: same-track pairs --calibration_gap
frames apart, and each crop's nearest other person within that many frames. The threshold that
separates them best (metrics.separating_gate) is printed as the gate for StrongSort's
`max_cos_dist` and BotSort's `appearance_thresh`; track.py measures what it does to tracking.

The graph is written directly from the Flax variables with the `onnx` helpers, mirroring
models.ReIDModel op for op with every BatchNorm folded into the conv or dense before it. (jax2tf
only emits XlaCallModule ops that tf2onnx cannot convert, and jax2onnx pins an orbax-checkpoint
older than ours.) Before anything is written, onnxruntime runs the graph against the JAX model on
random images, so an export that drifts from models.py fails instead of shipping.
"""

import dataclasses
import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import onnx
from absl import app, flags, logging
from onnx import TensorProto, helper, numpy_helper

import checkpoints
import input_pipeline
import metrics
import models
import train

INPUT_NAME = 'images'
OUTPUT_NAME = 'output'
MIN_OPSET = 12
BN_EPSILON = 1e-5     # models._batch_norm and models._head_batch_norm
NORM_EPSILON = 1e-12  # models.l2_normalize
PARITY_ATOL = 1e-4    # on L2-normalised features; raw features are compared relative to their scale
# BoxMOT's ReID artifact sidecar (boxmot/reid/core/artifacts.py, BoxMOT 25.0.0): with these schema
# versions set it rejects unknown model_kwargs keys, so img_size is the only one written.
BOXMOT_SCHEMA_VERSION = 1
BOXMOT_MODEL_KWARGS_SCHEMA_VERSION = 1

# ---- Graph building ----


class _Graph:
  """Collects ONNX nodes and float32 initializers under unique names."""

  def __init__(self, opset: int):
    self.opset = opset
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []

  def const(self, name: str, value) -> str:
    self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name

  def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
    self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
    return name


def _bn_scale_shift(params: dict, stats: dict) -> tuple[np.ndarray, np.ndarray]:
  """Eval-mode BatchNorm as y = x * scale + shift (a missing scale or bias counts as 1 or 0)."""
  inv_std = 1.0 / np.sqrt(np.asarray(stats['var'], np.float64) + BN_EPSILON)
  scale = np.asarray(params.get('scale', 1.0), np.float64) * inv_std
  shift = np.asarray(params.get('bias', 0.0), np.float64) - np.asarray(stats['mean']) * scale
  return scale, shift


def _conv_bn(g: _Graph, x: str, params: dict, stats: dict, conv: str, bn: str, stride: int,
             name: str, relu: bool) -> str:
  """models._conv + models._batch_norm (+ ReLU) as one Conv with the BN folded in."""
  kernel = np.asarray(params[conv]['kernel'], np.float64)  # HWIO
  scale, shift = _bn_scale_shift(params[bn], stats[bn])
  weight = np.transpose(kernel * scale, (3, 2, 0, 1))  # OIHW
  size = kernel.shape[0]
  pad = size // 2  # models._conv pads symmetrically, as torch does
  y = g.node('Conv', [x, g.const(f'{name}.weight', weight), g.const(f'{name}.bias', shift)],
             name, kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4)
  return g.node('Relu', [y], f'{name}.relu') if relu else y


def _residual_block(g: _Graph, x: str, params: dict, stats: dict, kind: str, stride: int,
                    name: str) -> str:
  """models.ResidualBlock (torchvision BasicBlock or Bottleneck, stride on the 3x3 conv)."""
  if kind == 'basic':
    y = _conv_bn(g, x, params, stats, 'conv1', 'bn1', stride, f'{name}.conv1', relu=True)
    y = _conv_bn(g, y, params, stats, 'conv2', 'bn2', 1, f'{name}.conv2', relu=False)
  else:
    y = _conv_bn(g, x, params, stats, 'conv1', 'bn1', 1, f'{name}.conv1', relu=True)
    y = _conv_bn(g, y, params, stats, 'conv2', 'bn2', stride, f'{name}.conv2', relu=True)
    y = _conv_bn(g, y, params, stats, 'conv3', 'bn3', 1, f'{name}.conv3', relu=False)
  shortcut = x
  if 'downsample_conv' in params:
    shortcut = _conv_bn(g, x, params, stats, 'downsample_conv', 'downsample_bn', stride,
                        f'{name}.downsample', relu=False)
  return g.node('Relu', [g.node('Add', [y, shortcut], f'{name}.add')], f'{name}.relu')


def _backbone(g: _Graph, x: str, model: models.ReIDModel, params: dict, stats: dict) -> str:
  """models.ResNet: stem, max pool and four stages of residual blocks."""
  kind, blocks_per_stage = models.RESNET_LAYOUTS[model.depth]
  x = _conv_bn(g, x, params, stats, 'conv1', 'bn1', 2, 'conv1', relu=True)
  # ONNX MaxPool ignores padded cells, as the -inf padding of nn.max_pool does.
  x = g.node('MaxPool', [x], 'maxpool', kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
  for stage, num_blocks in enumerate(blocks_per_stage):
    stage_stride = 1 if stage == 0 else (model.last_stride if stage == 3 else 2)
    for index in range(num_blocks):
      block = f'layer{stage + 1}_{index}'
      x = _residual_block(g, x, params[block], stats[block], kind,
                          stage_stride if index == 0 else 1, block)
  return x


def _pool(g: _Graph, x: str, model: models.ReIDModel, params: dict) -> str:
  """Global average or GeM pooling, NCHW -> (N, C)."""
  if model.pooling == 'gem':
    p = np.asarray(params['gem']['p'], np.float32).reshape(())
    x = g.node('Max', [x, g.const('gem.eps', models.GeM.eps)], 'gem.clamp')
    x = g.node('Pow', [x, g.const('gem.p', p)], 'gem.pow')
    x = g.node('GlobalAveragePool', [x], 'gem.mean')
    x = g.node('Pow', [x, g.const('gem.inv_p', 1.0 / p)], 'gem.root')
  else:
    x = g.node('GlobalAveragePool', [x], 'avgpool')
  return g.node('Flatten', [x], 'flatten', axis=1)


def _dense(g: _Graph, x: str, kernel, bias, name: str) -> str:
  return g.node('Gemm', [x, g.const(f'{name}.weight', kernel), g.const(f'{name}.bias', bias)],
                name)


def _head(g: _Graph, x: str, model: models.ReIDModel, params: dict, stats: dict) -> tuple[str, int]:
  """The test-time embedding of models.LinearHead or models.BNNeckHead, and its size."""
  if model.head == 'bnneck':
    scale, shift = _bn_scale_shift(params['bn'], stats['bn'])
    x = g.node('Mul', [x, g.const('head.bn.scale', scale)], 'head.bn.mul')
    return g.node('Add', [x, g.const('head.bn.shift', shift)], 'head.bn'), len(shift)
  scale, shift = _bn_scale_shift(params['bn_hidden'], stats['bn_hidden'])
  kernel = np.asarray(params['fc_hidden']['kernel'], np.float64) * scale
  bias = np.asarray(params['fc_hidden']['bias'], np.float64) * scale + shift
  x = g.node('Relu', [_dense(g, x, kernel, bias, 'head.fc_hidden')], 'head.relu')
  embed_bias = np.asarray(params['fc_embed']['bias'])
  x = _dense(g, x, params['fc_embed']['kernel'], embed_bias, 'head.fc_embed')
  return x, len(embed_bias)


def _l2_normalize(g: _Graph, x: str) -> str:
  """x / max(||x||, 1e-12) over the last axis, as models.l2_normalize."""
  if g.opset >= 18:  # ReduceL2 takes its axes as an input from opset 18 on.
    axes = g.node('Constant', [], 'norm.axes', value=numpy_helper.from_array(np.array([1]), 'a'))
    norm = g.node('ReduceL2', [x, axes], 'norm.l2', keepdims=1)
  else:
    norm = g.node('ReduceL2', [x], 'norm.l2', axes=[1], keepdims=1)
  norm = g.node('Max', [norm, g.const('norm.eps', NORM_EPSILON)], 'norm.clamp')
  return g.node('Div', [x, norm], 'norm.div')


def to_onnx(model: models.ReIDModel, variables: dict[str, Any], image_size: tuple[int, int], *,
            normalize: bool = True, opset: int = 17) -> onnx.ModelProto:
  """The float32 eval-mode ONNX graph of `model.embed` (or the raw embedding), NCHW input."""
  if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
    raise ValueError(f'opset must be in [{MIN_OPSET}, {onnx.defs.onnx_opset_version()}], '
                     f'got {opset}')
  params, stats = jax.device_get((variables['params'], variables['batch_stats']))
  g = _Graph(opset)
  x = _backbone(g, INPUT_NAME, model, params['backbone'], stats['backbone'])
  x = _pool(g, x, model, params)
  x, embedding_size = _head(g, x, model, params['head'], stats['head'])
  if normalize:
    x = _l2_normalize(g, x)
  g.nodes.append(helper.make_node('Identity', [x], [OUTPUT_NAME], name=OUTPUT_NAME))
  height, width = image_size
  graph = helper.make_graph(
      g.nodes, 'reid',
      [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ['batch', 3, height, width])],
      [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ['batch', embedding_size])],
      initializer=g.initializers)
  opset_ids = [helper.make_opsetid('', opset)]
  # The oldest IR version the opset allows, so that older onnxruntime builds load the file too.
  onnx_model = helper.make_model(graph, opset_imports=opset_ids, producer_name='reid-jax',
                                 ir_version=helper.find_min_ir_version_for(opset_ids))
  onnx.checker.check_model(onnx_model, full_check=True)
  return onnx_model


# ---- Checking against JAX ----


def run_onnx(onnx_model: onnx.ModelProto | bytes | str, images_nchw: np.ndarray) -> np.ndarray:
  """Runs the exported graph with onnxruntime on the CPU."""
  import onnxruntime  # Only needed here; importing it is slow.

  if isinstance(onnx_model, onnx.ModelProto):
    onnx_model = onnx_model.SerializeToString()
  session = onnxruntime.InferenceSession(onnx_model, providers=['CPUExecutionProvider'])
  return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(images_nchw, np.float32)})[0]


def run_jax(model: models.ReIDModel, variables: dict[str, Any], pixels: np.ndarray,
            normalize: bool = True) -> np.ndarray:
  """What the export should compute for uint8 NHWC pixels: the float32 test-time embedding."""
  model = model.clone(dtype=jnp.float32)  # the export is float32 whatever the training dtype
  return np.asarray(models.embed(model, variables, jnp.asarray(pixels), normalize=normalize))


def onnx_input(pixels: np.ndarray) -> np.ndarray:
  """The exported graph's input for uint8 NHWC pixels: normalised NCHW float32 (the contract)."""
  return np.transpose(np.asarray(models.normalize_images(jnp.asarray(pixels))), (0, 3, 1, 2))


def parity_error(onnx_model: onnx.ModelProto, model: models.ReIDModel, variables: dict[str, Any],
                 pixels: np.ndarray, normalize: bool = True) -> float:
  """Max |onnxruntime - JAX| on uint8 NHWC pixels, divided by max(1, max |JAX|) for raw features."""
  expected = run_jax(model, variables, pixels, normalize)
  actual = run_onnx(onnx_model, onnx_input(pixels))
  if actual.shape != expected.shape:
    raise ValueError(f'ONNX output shape {actual.shape} != JAX output shape {expected.shape}')
  return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


# ---- Appearance-distance calibration ----


def val_crops(config: ml_collections.ConfigDict, max_images: int) -> input_pipeline.FileList:
  """The val list's `<SEQ>_<id>/<frame>.jpg` crops of the earliest frames, whole frames only,
  at most `max_images` (every person of those frames stays, so nearest-other distances are real)."""
  if not config.data.val_list:
    raise ValueError('the config has no val list (config.data.val_list)')
  list_path = os.path.join(config.data.root, config.data.val_list)
  data = input_pipeline.read_filelist(list_path,
                                      os.path.join(config.data.root, config.data.image_dir))
  frames = metrics.path_metadata(data.paths)['frame']
  if (frames < 0).any():
    bad = data.paths[int(np.argmax(frames < 0))]
    raise ValueError(f'{list_path}: {bad} is not <SEQ>_<id>/<frame>.jpg (no frame numbers)')
  keep = np.ones(len(frames), bool)
  if len(frames) > max_images:
    cutoff = np.sort(frames)[max_images]  # frames before the one that would overflow
    keep = frames < cutoff
  rows = np.nonzero(keep)[0]
  return dataclasses.replace(data, paths=tuple(data.paths[i] for i in rows),
                             labels=data.labels[rows], lines=data.lines[rows])


def calibrate(config: ml_collections.ConfigDict, model: models.ReIDModel,
              variables: dict[str, Any], *, gap: int = 1,
              max_images: int = 20000) -> dict[str, Any]:
  """metrics.appearance_distance_percentiles on the val crops, and which crops were used."""
  data = val_crops(config, max_images)
  meta = metrics.path_metadata(data.paths)
  # float32: what the exported graph computes.
  features = train.embed_images(config, model.clone(dtype=jnp.float32), variables, data,
                                normalize=True)
  result = metrics.appearance_distance_percentiles(features, meta['identity'], meta['sequence'],
                                                   meta['frame'], gap)
  result['source'] = {'list': os.path.abspath(data.source), 'crops': data.num_images,
                      'identities': len(set(meta['identity'])),
                      'last_frame': int(meta['frame'].max())}
  return result


def format_calibration(result: dict[str, Any]) -> str:
  """Two lines for the terminal: the gate and the distributions it separates."""
  same, other = result['same_track'], result['nearest_other']
  return (f"appearance gate {result['gate']:.2f} (cosine distance: StrongSort max_cos_dist, "
          f"BotSort appearance_thresh); above it {100 * result['same_track_above_gate']:.1f}% of "
          f"same-track pairs, at or below it {100 * result['nearest_other_at_or_below_gate']:.1f}%"
          f" of nearest others\n  same track {result['gap_frames']} frame(s) apart: "
          f"p50 {same['p50']:.3f} p90 {same['p90']:.3f} p99 {same['p99']:.3f} ({same['count']}); "
          f"nearest other person within {result['gap_frames']}: p1 {other['p1']:.3f} "
          f"p10 {other['p10']:.3f} p50 {other['p50']:.3f} ({other['count']})")


# ---- Exporting a workdir ----


def sidecar_path(output: str) -> str:
  """reid.onnx -> reid.json."""
  return os.path.splitext(output)[0] + '.json'


def boxmot_metadata_path(output: str) -> str:
  """reid.onnx -> reid.onnx.metadata.json, the sidecar BoxMOT reads next to its ReID weights."""
  return output + '.metadata.json'


def boxmot_metadata(image_size: tuple[int, int]) -> dict[str, Any]:
  """BoxMOT's artifact metadata: the crop size [H, W] and its plain (non-letterboxed) resize."""
  height, width = (int(s) for s in image_size)
  return {
      'schema_version': BOXMOT_SCHEMA_VERSION,
      'model_kwargs_schema_version': BOXMOT_MODEL_KWARGS_SCHEMA_VERSION,
      'model_kwargs': {'img_size': [height, width]},
      'img_size': [height, width],
      'preprocess': 'resize',
  }


def sidecar(config: ml_collections.ConfigDict, workdir: str, checkpoint: str, step: int,
            embedding_size: int, normalize: bool, opset: int) -> dict[str, Any]:
  """What a tracker needs to feed the model, and where its weights came from."""
  height, width = (int(s) for s in config.data.image_size)
  return {
      'format': 'onnx',
      'input_name': INPUT_NAME,
      'output_name': OUTPUT_NAME,
      'input_shape': ['batch', 3, height, width],
      'input_size': {'height': height, 'width': width},
      'layout': 'NCHW',
      'color_order': 'RGB',
      'dtype': 'float32',
      'mean_255': list(models.IMAGENET_MEAN_RGB),
      'std_255': list(models.IMAGENET_STD_RGB),
      'mean': [round(m / 255, 6) for m in models.IMAGENET_MEAN_RGB],
      'std': [round(s / 255, 6) for s in models.IMAGENET_STD_RGB],
      'preprocessing': 'resize crop to HxW (no aspect ratio kept), RGB, x/255, (x - mean) / std',
      'embedding_size': embedding_size,
      'normalized': normalize,
      'distance': 'cosine (= squared Euclidean / 2) on normalized features' if normalize
                  else 'squared Euclidean on raw features',
      'opset': opset,
      'source': {'workdir': os.path.abspath(workdir), 'checkpoint': checkpoint, 'step': step},
      'config': config.to_dict(),
  }


def export_workdir(workdir: str, output: str, checkpoint: str = 'best', *, normalize: bool = True,
                   opset: int = 17, overwrite: bool = False, seed: int = 0,
                   calibration: bool = True, calibration_gap: int = 1,
                   calibration_max_images: int = 20000) -> dict[str, Any]:
  """Writes `output` (.onnx), its .json sidecar and BoxMOT's; returns the .json sidecar.

  The calibration is recorded as `appearance_distance` (None with `appearance_distance_skipped`
  saying why, when the val list cannot give one: the export itself does not depend on it).
  """
  if not output.endswith('.onnx'):
    raise ValueError(f'{output}: the output name must end in .onnx')
  if calibration_gap < 1 or calibration_max_images < 2:
    raise ValueError(f'{output}: calibration_gap must be >= 1 and calibration_max_images >= 2')
  meta_path, boxmot_path = sidecar_path(output), boxmot_metadata_path(output)
  if not overwrite:
    for path in (output, meta_path, boxmot_path):
      if os.path.exists(path):
        raise ValueError(f'{path}: exists (pass --overwrite to replace it)')
  if not os.path.isdir(workdir):
    raise ValueError(f'{workdir}: no such workdir')
  config, model, variables, step = checkpoints.load_checkpoint(workdir, checkpoint)
  image_size = tuple(int(s) for s in config.data.image_size)
  onnx_model = to_onnx(model, variables, image_size, normalize=normalize, opset=opset)

  # An odd batch of random pixels, through the sidecar's preprocessing contract.
  pixels = np.random.default_rng(seed).integers(0, 256, (3, *image_size, 3), dtype=np.uint8)
  error = parity_error(onnx_model, model, variables, pixels, normalize)
  if error > PARITY_ATOL:
    raise ValueError(f'{output}: ONNX differs from the JAX model by {error:.3g} (> {PARITY_ATOL}); '
                     'does export.py still mirror models.py?')
  embedding_size = onnx_model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
  meta = sidecar(config, workdir, checkpoint, step, embedding_size, normalize, opset)
  meta['parity_error'] = error
  meta['appearance_distance'] = None
  if calibration:
    try:
      meta['appearance_distance'] = calibrate(config, model, variables, gap=calibration_gap,
                                              max_images=calibration_max_images)
    except ValueError as e:  # no val list, no frame numbers, no pairs: export without it
      meta['appearance_distance_skipped'] = str(e)
      logging.warning('no appearance calibration: %s', e)

  folder = os.path.dirname(os.path.abspath(output))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:  # e.g. a file where a folder of the path should be
    raise ValueError(f'{output}: cannot create folder {folder} ({e.strerror})') from None
  checkpoints.write_atomically(output, onnx_model.SerializeToString(), overwrite)
  checkpoints.write_atomically(meta_path, (json.dumps(meta, indent=2) + '\n').encode(), overwrite)
  checkpoints.write_atomically(
      boxmot_path, (json.dumps(boxmot_metadata(image_size), indent=2) + '\n').encode(), overwrite)
  return meta


# ---- Command line ----

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so importing export is free)."""
  flags.DEFINE_string('workdir', None, 'train.py workdir (with config.json and checkpoints/).')
  flags.DEFINE_string('output', None, 'ONNX file to write; the sidecar goes next to it as .json.')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_boolean('normalize', True, 'L2-normalise the output features (trackers expect it).')
  flags.DEFINE_integer('opset', 17, f'ONNX opset (>= {MIN_OPSET}).')
  flags.DEFINE_boolean('overwrite', False, 'Replace an existing output and sidecars.')
  flags.DEFINE_boolean('calibrate', True, 'Measure appearance distances on the val list and '
                       'print the tracker gate that separates same-track pairs from others.')
  flags.DEFINE_integer('calibration_gap', 1, 'Frames between the same-track pairs (and the '
                       'window of the nearest other person).')
  flags.DEFINE_integer('calibration_max_images', 20000, 'Val crops embedded at most (the '
                       'earliest frames).')
  flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_handler().addFilter(checkpoints.QuietLogs())
  try:
    meta = export_workdir(FLAGS.workdir, FLAGS.output, FLAGS.checkpoint,
                          normalize=FLAGS.normalize, opset=FLAGS.opset, overwrite=FLAGS.overwrite,
                          calibration=FLAGS.calibrate, calibration_gap=FLAGS.calibration_gap,
                          calibration_max_images=FLAGS.calibration_max_images)
  except (ValueError, OSError) as e:  # OSError: e.g. a file where --output needs a folder
    sys.exit(f'error: {e}')
  kind = 'normalized' if meta['normalized'] else 'raw'
  print(f"wrote {FLAGS.output}, {sidecar_path(FLAGS.output)} and "
        f"{boxmot_metadata_path(FLAGS.output)}: step {meta['source']['step']}, "
        f"{meta['embedding_size']}-d {kind} features, "
        f"max |ONNX - JAX| / max(1, |JAX|) = {meta['parity_error']:.2g}")
  if meta['appearance_distance'] is not None:
    print(format_calibration(meta['appearance_distance']))


if __name__ == '__main__':
  define_flags()
  app.run(main)
