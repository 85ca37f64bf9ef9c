"""Evaluates trained ReID models: metrics, embeddings for trackers and ranked-list pictures.

    python evaluate.py --workdir=runs/x [--checkpoint=best|latest|<step>] [--list=<filelist>]
        [--protocol=all|frame_gap] [--flip_tta]                    # table + <workdir>/eval_*.json
    python evaluate.py --workdir=runs/x --query_list=q.txt --gallery_list=g.txt    # Market style
    python evaluate.py --workdir=runs/x --mode=embed --output=feats.npz
    python evaluate.py --workdir=runs/x --mode=visualize --output=ranks.png [--worst]

Trackers: `Embedder.from_workdir('runs/x')(crops)` -> (N, D) L2-normalised features.

The metrics and their protocols live in metrics.py, the embedding of a list in train.py (the same
code scores the val list during training), the workdir in checkpoints.py.
"""

import functools
import hashlib
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageDraw, ImageFont

import checkpoints
import input_pipeline
import metrics
import models
import train

FLAGS = flags.FLAGS

# ---- Tracker API ----


def resize_crop(crop: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
  """uint8 HxWx3 -> image_size with the input pipeline's resize."""
  if crop.shape[:2] == tuple(image_size):
    return crop  # a half-pixel-centre resize to the same size is the identity
  return input_pipeline.resize_image(crop, image_size).numpy()


def _rgb_crop(crop: Any, index: int) -> np.ndarray:
  """A uint8 HxWx3 view of a crop; grey (HxW, HxWx1) and RGBA as the input pipeline decodes them."""
  crop = np.asarray(crop)
  if crop.dtype != np.uint8:
    raise ValueError(f'crop {index}: expected uint8 pixels (0..255), got {crop.dtype}')
  if crop.ndim == 2:
    crop = crop[:, :, None]
  if crop.ndim != 3 or crop.shape[2] not in (1, 3, 4) or 0 in crop.shape:
    raise ValueError(f'crop {index}: expected a non-empty HxWx3 RGB array, got shape {crop.shape}')
  if crop.shape[2] == 1:
    return np.repeat(crop, 3, axis=2)
  return crop[:, :, :3]  # RGBA: alpha dropped, as tf.io.decode_png(channels=3) does


class Embedder:
  """Loads a trained model once; `embedder(crops)` -> (N, D) L2-normalised float32 features.

  Crops are uint8 RGB arrays of any size (a list, or an NHWC batch), resized as in evaluation.
  Batches are padded to the next of `batch_sizes` (longer inputs are split), so the model
  compiles at most once per batch size however many crops each call brings.
  """

  def __init__(self, config: ml_collections.ConfigDict, model: models.ReIDModel,
               variables: Any, step: int | None = None, *, flip_tta: bool = False,
               batch_sizes: Sequence[int] = (1, 8, 32, 128), device: jax.Device | None = None):
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError(f'batch_sizes must be positive, got {tuple(batch_sizes)}')
    self.config, self.step, self.flip_tta = config, step, flip_tta
    self.image_size = tuple(config.data.image_size)
    self.batch_sizes = tuple(sorted(set(batch_sizes)))
    self.device = device or jax.devices()[0]
    self._variables = jax.device_put(variables, self.device)

    forward = functools.partial(models.embed, model, flip_tta=flip_tta, normalize=True)
    self._forward = jax.jit(forward)
    probe = jax.ShapeDtypeStruct((1, *self.image_size, 3), jnp.uint8)
    self.dim = jax.eval_shape(forward, self._variables, probe).shape[1]

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = 'best', **kwargs) -> 'Embedder':
    """An Embedder for a train.py workdir's 'best', 'latest' or numbered checkpoint."""
    config, model, variables, step = checkpoints.load_checkpoint(workdir, checkpoint)
    return cls(config, model, variables, step, **kwargs)

  def preprocess(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 model input from crops of any size."""
    if isinstance(crops, np.ndarray) and crops.ndim == 4 and crops.dtype == np.uint8 \
        and crops.shape[1:] == (*self.image_size, 3):
      return crops
    resized = [resize_crop(_rgb_crop(crop, i), self.image_size) for i, crop in enumerate(crops)]
    if not resized:
      return np.zeros((0, *self.image_size, 3), np.uint8)
    return np.stack(resized)

  def __call__(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    images = self.preprocess(crops)
    largest = self.batch_sizes[-1]
    pieces = []
    for start in range(0, len(images), largest):
      chunk = images[start:start + largest]
      size = next(b for b in self.batch_sizes if b >= len(chunk))
      padded = np.zeros((size, *self.image_size, 3), np.uint8)
      padded[:len(chunk)] = chunk
      features = self._forward(self._variables, jax.device_put(padded, self.device))
      pieces.append(np.asarray(features)[:len(chunk)])
    if not pieces:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(pieces)


# ---- Command line: shared ----


def _default_list(config: ml_collections.ConfigDict, list_path: str | None) -> str:
  """--list, or the config's val list (relative to config.data.root)."""
  if list_path:
    return list_path
  if not config.data.val_list:
    raise ValueError('the workdir config has no val list (config.data.val_list); pass --list')
  return os.path.join(config.data.root, config.data.val_list)


def _default_image_root(config: ml_collections.ConfigDict, image_root: str | None) -> str:
  return image_root or os.path.join(config.data.root, config.data.image_dir)


def _list_name(list_path: str) -> str:
  return os.path.splitext(os.path.basename(list_path))[0]


def _result_name(list_paths: Sequence[str], image_root: str) -> str:
  """'<list>[_vs_<gallery>]_<6 hex>', the hash of the absolute lists and image root."""
  # Another folder's val_20.txt must not overwrite this one's result.
  key = json.dumps([os.path.abspath(p) for p in (*list_paths, image_root)])
  digest = hashlib.sha1(key.encode()).hexdigest()[:6]
  return f"{'_vs_'.join(map(_list_name, list_paths))}_{digest}"


def _check_output(path: str, overwrite: bool) -> None:
  """Refuses to replace an existing file unless asked to, so no earlier result is lost."""
  if os.path.exists(path) and not overwrite:
    raise ValueError(f'{path}: already exists (pass --overwrite to replace it)')
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f'{path}: folder {folder} does not exist')


# ---- Command line: evaluation ----


def _frame_metadata(data: input_pipeline.FileList) -> dict[str, np.ndarray]:
  """Sequences and frames for the frame-gap protocol; every path must carry its frame number."""
  meta = metrics.path_metadata(data.paths)
  unknown = np.flatnonzero(meta['frame'] < 0)
  if len(unknown):
    i = unknown[0]
    raise ValueError(f"{data.source}:{data.lines[i]}: --protocol=frame_gap needs "
                     f"'<SEQ>_<id>/<frame>.jpg' paths, got {data.paths[i]!r}")
  return meta


def _json_safe(metrics: dict[str, float]) -> dict[str, float | None]:
  return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def evaluate_checkpoint(workdir: str, checkpoint: str = 'best', *, list_path: str | None = None,
                        query_list: str | None = None, gallery_list: str | None = None,
                        image_root: str | None = None, protocol: str = 'all',
                        frame_gap: int | None = None, flip_tta: bool = False) -> dict[str, Any]:
  """Scores a checkpoint and writes the result to <workdir>/eval_*.json; returns that result.

  All-vs-all on one list (the config's val list by default), or query/gallery mode with the
  Market-1501 same-camera filter when every file name carries a camera id. frame_gap None
  takes config.eval.frame_gap, or 30 when that is 0.
  """
  if protocol not in ('all', 'frame_gap'):
    raise ValueError(f"--protocol must be 'all' or 'frame_gap', got {protocol!r}")
  if (query_list is None) != (gallery_list is None):
    raise ValueError('--query_list and --gallery_list go together')
  if query_list and list_path:
    raise ValueError('give --list (all-vs-all) or --query_list/--gallery_list, not both')
  if query_list and protocol != 'all':
    raise ValueError('--protocol=frame_gap is for all-vs-all evaluation of one --list')
  if frame_gap is not None and frame_gap < 0:
    raise ValueError(f'--frame_gap must be >= 0, got {frame_gap}')
  config = checkpoints.load_config(workdir)
  root = _default_image_root(config, image_root)
  result = {'workdir': os.path.abspath(workdir), 'checkpoint': checkpoint, 'image_root': root,
            'protocol': protocol, 'flip_tta': flip_tta, 'normalize': bool(config.eval.normalize),
            'image_size': list(config.data.image_size)}
  if query_list:
    query = input_pipeline.read_filelist(query_list, root)
    gallery = input_pipeline.read_filelist(gallery_list, root)
    name = _result_name([query_list, gallery_list], root)
    result.update(mode='query-gallery', query_list=query_list, gallery_list=gallery_list)
  else:
    list_path = _default_list(config, list_path)
    query = gallery = input_pipeline.read_filelist(list_path, root)
    name = _result_name([list_path], root)
    result.update(mode='all-vs-all', list=list_path)
    if protocol == 'frame_gap':
      frame_gap = frame_gap if frame_gap is not None else (config.eval.frame_gap or 30)
      result['frame_gap'] = frame_gap
      meta = _frame_metadata(query)

  config, model, variables, step = checkpoints.load_checkpoint(workdir, checkpoint)
  result['step'] = step
  query_emb = train.embed_images(config, model, variables, query, flip_tta=flip_tta)
  if query_list:
    gallery_emb = train.embed_images(config, model, variables, gallery, flip_tta=flip_tta)
    scores, no_camera = metrics.query_gallery_metrics(
        query_emb, query.labels, query.paths, gallery_emb, gallery.labels, gallery.paths)
    result['camera_filter'] = no_camera is None
    if no_camera is not None:
      result['camera_filter_off_because'] = f'{no_camera} has no <id>_c<camera> file name'
  elif protocol == 'frame_gap':
    scores = metrics.reid_metrics(query_emb, query.labels, frames=meta['frame'],
                                  sequences=meta['sequence'], frame_gap=frame_gap)
  else:
    scores = metrics.reid_metrics(query_emb, query.labels)
  result['metrics'] = _json_safe(scores)

  suffix = (f'_gap{frame_gap}' if protocol == 'frame_gap' else '') + ('_flip' if flip_tta else '')
  result['output'] = os.path.join(workdir, f'eval_{name}_step{step}{suffix}.json')
  checkpoints.write_atomically(result['output'], (json.dumps(result, indent=2) + '\n').encode())
  return result


def format_table(result: dict[str, Any]) -> str:
  """The evaluation result as a short text table."""
  m = result['metrics']
  lines = [f"{result['workdir']}: step {result['step']} (--checkpoint={result['checkpoint']}), "
           f"flip TTA {'on' if result['flip_tta'] else 'off'}"]
  if result['mode'] == 'all-vs-all':
    protocol = 'all-vs-all' if result['protocol'] == 'all' else (
        f"frame gap {result['frame_gap']}")
    lines.append(f"list {result['list']}: every image queries the other "
                 f"{m['num_gallery'] - 1} (self excluded)")
  else:
    protocol = 'query/gallery'
    cameras = ('same-identity same-camera gallery items ignored' if result['camera_filter'] else
               f"camera filter off: {result['camera_filter_off_because']}")
    lines.append(f"query {result['query_list']} vs gallery {result['gallery_list']}; {cameras}")
  header = ['protocol', 'mAP', 'R1', 'R5', 'R10', 'R20', 'mINP', 'queries', 'gallery']
  values = [protocol, *(('nan' if m[k] is None else f'{100 * m[k]:.2f}')
                        for k in ('mAP', 'R1', 'R5', 'R10', 'R20', 'mINP')),
            str(m['num_queries']), str(m['num_gallery'])]
  widths = [max(len(h), len(v)) for h, v in zip(header, values, strict=True)]
  lines.append('  '.join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
  lines.append('  '.join(v.rjust(w) for v, w in zip(values, widths, strict=True)))
  if m['num_skipped']:
    lines.append(f"{m['num_skipped']} queries without a positive in the gallery were skipped")
  lines.append(f"wrote {result['output']}")
  return '\n'.join(lines)


# ---- Command line: embeddings ----


def export_embeddings(workdir: str, checkpoint: str = 'best', *, list_path: str | None = None,
                      image_root: str | None = None, output: str | None = None,
                      overwrite: bool = False, flip_tta: bool = False) -> str:
  """Writes L2-normalised embeddings of a list (+ paths, labels, step, config) to .npz."""
  config = checkpoints.load_config(workdir)
  list_path = _default_list(config, list_path)
  root = _default_image_root(config, image_root)
  data = input_pipeline.read_filelist(list_path, root)
  config, model, variables, step = checkpoints.load_checkpoint(workdir, checkpoint)
  output = output or os.path.join(workdir, f'embeddings_{_list_name(list_path)}_step{step}.npz')
  _check_output(output, overwrite)
  embeddings = train.embed_images(config, model, variables, data, flip_tta=flip_tta, normalize=True)
  arrays = {'embeddings': embeddings, 'paths': np.asarray(data.paths),
            'labels': data.labels, 'step': np.int64(step), 'list': np.asarray(list_path),
            'image_root': np.asarray(root), 'flip_tta': np.bool_(flip_tta),
            'config': np.asarray(config.to_json_best_effort(sort_keys=True))}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  checkpoints.write_atomically(output, buffer.getvalue())
  return output


# ---- Command line: ranked-list picture ----

THUMB_HEIGHT = 128  # crops are drawn at this height, with the model input's aspect ratio
BORDER = 4
CAPTION_HEIGHT = 14
SPACING = 6
QUERY_GAP = 16  # extra space between the query and its ranked list
GREEN, RED, QUERY_COLOR = (0, 170, 0), (220, 0, 0), (60, 60, 60)


def rank_gallery(embeddings: np.ndarray, queries: Sequence[int],
                 top_k: int) -> tuple[np.ndarray, np.ndarray]:
  """All-vs-all top-k (indices, Euclidean distances) of each query, self excluded, ties by index."""
  x = np.asarray(embeddings, np.float32)
  queries = np.asarray(queries, np.int64)
  d2 = np.empty((len(queries), len(x)))
  for row, query in enumerate(queries):  # one (N, D) difference at a time bounds the memory
    diff = x - x[query]
    d2[row] = np.einsum('nd,nd->n', diff, diff, dtype=np.float64)
  d2[np.arange(len(queries)), queries] = np.inf
  order = np.argsort(d2, axis=1, kind='stable')[:, :top_k]
  return order, np.sqrt(np.take_along_axis(d2, order, axis=1))


def choose_queries(ap: np.ndarray, valid: np.ndarray, num_queries: int, seed: int,
                   worst: bool) -> np.ndarray:
  """Queries with a positive: the lowest-AP ones (worst first), or a seeded sample in list order."""
  candidates = np.flatnonzero(valid)
  num = min(num_queries, len(candidates))
  if worst:
    return candidates[np.argsort(ap[candidates], kind='stable')[:num]]
  return np.sort(np.random.default_rng(seed).choice(candidates, size=num, replace=False))


def _thumbnail(path: str, size: tuple[int, int]) -> Image.Image:
  with Image.open(path) as image:
    return image.convert('RGB').resize(size, Image.Resampling.BILINEAR)


def draw_ranked_lists(data: input_pipeline.FileList, queries: Sequence[int], ranked: np.ndarray,
                      distances: np.ndarray, ap: np.ndarray,
                      image_size: tuple[int, int]) -> Image.Image:
  """Rows of query (grey border, AP) + ranked crops (green: same identity, else red; distance)."""
  thumb = (max(1, round(THUMB_HEIGHT * image_size[1] / image_size[0])), THUMB_HEIGHT)  # (W, H)
  cell_w, cell_h = thumb[0] + 2 * BORDER, thumb[1] + 2 * BORDER + CAPTION_HEIGHT
  top_k = ranked.shape[1]
  width = SPACING + (top_k + 1) * (cell_w + SPACING) + QUERY_GAP
  height = SPACING + len(queries) * (cell_h + SPACING)
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default()

  def cell(row: int, column: int, index: int, color: tuple[int, int, int], caption: str):
    x = SPACING + column * (cell_w + SPACING) + (QUERY_GAP if column else 0)
    y = SPACING + row * (cell_h + SPACING)
    draw.rectangle([x, y, x + cell_w - 1, y + thumb[1] + 2 * BORDER - 1], fill=color)
    canvas.paste(_thumbnail(os.path.join(data.image_root, data.paths[index]), thumb),
                 (x + BORDER, y + BORDER))
    draw.text((x + cell_w // 2, y + thumb[1] + 2 * BORDER + CAPTION_HEIGHT // 2), caption,
              fill=(0, 0, 0), font=font, anchor='mm')

  for row, query in enumerate(queries):
    cell(row, 0, query, QUERY_COLOR, f'AP {ap[query]:.2f}')
    for column, (index, distance) in enumerate(zip(ranked[row], distances[row], strict=True)):
      same = data.labels[index] == data.labels[query]
      cell(row, column + 1, index, GREEN if same else RED, f'{distance:.2f}')
  return canvas


def visualize_checkpoint(workdir: str, checkpoint: str = 'best', *,
                         list_path: str | None = None, image_root: str | None = None,
                         output: str | None = None, overwrite: bool = False,
                         num_queries: int = 8, top_k: int = 10, seed: int = 0,
                         worst: bool = False, flip_tta: bool = False) -> dict[str, Any]:
  """Draws queries and their all-vs-all top-k to a PNG; returns what it drew."""
  if num_queries < 1 or top_k < 1:
    raise ValueError(f'--num_queries and --top_k must be >= 1, got {num_queries} and {top_k}')
  config = checkpoints.load_config(workdir)
  list_path = _default_list(config, list_path)
  data = input_pipeline.read_filelist(list_path, _default_image_root(config, image_root))
  if data.num_images < 2:
    raise ValueError(f'{list_path}: needs at least 2 images for a ranked list')
  config, model, variables, step = checkpoints.load_checkpoint(workdir, checkpoint)
  output = output or os.path.join(workdir, f'ranks_{_list_name(list_path)}_step{step}.png')
  _check_output(output, overwrite)
  embeddings = train.embed_images(config, model, variables, data, flip_tta=flip_tta)
  stats = metrics.retrieval_stats(embeddings, data.labels)
  valid = stats['num_positives'] > 0
  if not valid.any():
    raise ValueError(f'{list_path}: no image shares its identity with another; nothing to rank')
  queries = choose_queries(stats['ap'], valid, num_queries, seed, worst)
  ranked, distances = rank_gallery(embeddings, queries, min(top_k, data.num_images - 1))
  picture = draw_ranked_lists(data, queries, ranked, distances, stats['ap'],
                              config.data.image_size)
  buffer = io.BytesIO()
  picture.save(buffer, format='PNG')
  checkpoints.write_atomically(output, buffer.getvalue())
  return {'output': output, 'step': step, 'queries': queries, 'ranked': ranked,
          'distances': distances, 'ap': stats['ap'][queries]}


# ---- main ----


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Declares the command-line flags (only when run as a script: train/export share names)."""
  fv = {'flag_values': flag_values}
  flags.DEFINE_string('workdir', None, 'A train.py workdir (config.json + checkpoints/).', **fv)
  flags.DEFINE_enum('mode', 'eval', ['eval', 'embed', 'visualize'],
                    'eval: metrics table + JSON; embed: features to .npz; visualize: ranked-list '
                    'PNG.', **fv)
  flags.DEFINE_string('checkpoint', 'best', "'best' (val mAP), 'latest' or a step number.", **fv)
  flags.DEFINE_string('list', None,
                      "A '<path> <label>' filelist (default: the config's val list).", **fv)
  flags.DEFINE_string('image_root', None, 'Folder the list paths are relative to '
                      '(default: config data.root/data.image_dir).', **fv)
  flags.DEFINE_enum('protocol', 'all', ['all', 'frame_gap'],
                    'all: MMDet all-vs-all; frame_gap: also ignore same-track images within '
                    '--frame_gap frames.', **fv)
  flags.DEFINE_integer('frame_gap', None, 'Frames for --protocol=frame_gap '
                       '(default: config eval.frame_gap, or 30).', **fv)
  flags.DEFINE_bool('flip_tta', False, 'Average the embeddings of each image and its mirror.',
                    **fv)
  flags.DEFINE_string('query_list', None,
                      'Query/gallery mode (Market style): the query filelist.', **fv)
  flags.DEFINE_string('gallery_list', None, 'Query/gallery mode: the gallery filelist.', **fv)
  flags.DEFINE_string('output', None,
                      'embed/visualize: output file (default: in the workdir).', **fv)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output file.', **fv)
  # No lower_bound= on these: the functions check them, and their errors are one line.
  flags.DEFINE_integer('num_queries', 8, 'visualize: rows (queries).', **fv)
  flags.DEFINE_integer('top_k', 10, 'visualize: ranked gallery items per query.', **fv)
  flags.DEFINE_integer('seed', 0, 'visualize: seed of the query sample.', **fv)
  flags.DEFINE_bool('worst', False, 'visualize: the lowest-AP queries instead of a sample.', **fv)


def run(fv: flags.FlagValues) -> str:
  """Runs the mode the parsed flags ask for; returns the text to print."""
  if not fv.workdir:
    raise ValueError('--workdir is required')
  common = dict(checkpoint=fv.checkpoint, image_root=fv.image_root, flip_tta=fv.flip_tta)
  if fv.mode == 'eval':
    return format_table(evaluate_checkpoint(
        fv.workdir, list_path=fv.list, query_list=fv.query_list, gallery_list=fv.gallery_list,
        protocol=fv.protocol, frame_gap=fv.frame_gap, **common))
  if fv.query_list or fv.gallery_list:
    raise ValueError(f'--query_list/--gallery_list are for --mode=eval, not {fv.mode}')
  if fv['protocol'].present or fv.frame_gap is not None:
    raise ValueError(f'--protocol/--frame_gap are for --mode=eval, not {fv.mode}')
  if fv.mode == 'embed':
    path = export_embeddings(fv.workdir, list_path=fv.list, output=fv.output,
                             overwrite=fv.overwrite, **common)
    return f'wrote {path}'
  drawn = visualize_checkpoint(fv.workdir, list_path=fv.list, output=fv.output,
                               overwrite=fv.overwrite, num_queries=fv.num_queries,
                               top_k=fv.top_k, seed=fv.seed, worst=fv.worst, **common)
  return f"wrote {drawn['output']} ({len(drawn['queries'])} queries, step {drawn['step']})"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(checkpoints.QuietLogs())
  try:
    print(run(FLAGS))
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=train.parse_flags)
