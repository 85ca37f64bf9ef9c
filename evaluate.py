"""Evaluates trained ReID models: metrics, embeddings for trackers and ranked-list pictures.

    python evaluate.py --workdir=runs/x [--checkpoint=best|latest|<step>] [--list=<filelist>]
        [--protocol=all|frame_gap] [--flip_tta]                    # table + <workdir>/eval_*.json
    python evaluate.py --workdir=runs/x --query_list=q.txt --gallery_list=g.txt    # Market style
    python evaluate.py --workdir=runs/x --mode=embed --output=feats.npz
    python evaluate.py --workdir=runs/x --mode=visualize --output=ranks.png [--worst]

Trackers: `Embedder.from_workdir('runs/x')(crops)` -> (N, D) L2-normalised features.

Metrics (mAP, CMC rank-k, mINP) are computed on the JAX device in query chunks. Protocols (see
README): MMDet all-vs-all on the val list (every image queries all *other* images, self excluded by
index), an optional frame-gap filter for same-track neighbours, and query/gallery mode with the
Market-1501 camera filter. train.py uses `make_embed_fn` / `evaluate_filelist` for its evaluation.
"""

import functools
import hashlib
import json
import logging as std_logging
import math
import os
import posixpath
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

# Quiet TensorFlow's C++ start-up chatter unless asked for; must precede its first import.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorflow as tf
from absl import app, flags, logging
from jax.experimental import multihost_utils
from PIL import Image, ImageDraw, ImageFont

import input_pipeline
import models

FLAGS = flags.FLAGS

# Query chunks whose largest identity has more gallery images than this are ranked by binary
# search instead of counting: the break-even on a 2-core CPU was ~135 at G = 5k, ~80 at G = 20k.
SEARCH_ABOVE = 100
SEARCH_PAIRS = 1 << 20  # (gallery item, query) pairs per binary-search chunk: bounds its memory

# ---- Host-side input checks and encoding ----


def _features(x, name: str) -> np.ndarray:
  """Returns `x` as a finite float32 (N, D) host array."""
  x = np.asarray(jax.device_get(x), dtype=np.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} contains NaN or inf")
  return x


def _column(x, n: int, name: str) -> np.ndarray:
  """Returns `x` as a host array of length `n`."""
  x = np.asarray(jax.device_get(x))
  if x.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},), got {x.shape}")
  return x


def _encode(query_values: np.ndarray, gallery_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps any values (ints, strings) to shared int32 codes so the device only sees integers."""
  _, codes = np.unique(np.concatenate([query_values, gallery_values]), return_inverse=True)
  codes = codes.astype(np.int32)
  return codes[:len(query_values)], codes[len(query_values):]


def _positive_table(gallery_labels: np.ndarray, num_labels: int) -> np.ndarray:
  """(num_labels, P) gallery indices of each label in index order, padded with len(gallery)."""
  num_gallery = len(gallery_labels)
  counts = np.bincount(gallery_labels, minlength=num_labels)
  order = np.argsort(gallery_labels, kind="stable")
  starts = np.cumsum(counts) - counts
  column = np.arange(num_gallery) - np.repeat(starts, counts)
  table = np.full((num_labels, max(counts.max(), 1)), num_gallery, np.int32)
  table[gallery_labels[order], column] = order
  return table


# ---- Device computation ----


def _before(dist_a, index_a, dist_b, index_b):
  """True where item a ranks before item b: ranking is by (distance, gallery index)."""
  return (dist_a < dist_b) | ((dist_a == dist_b) & (index_a < index_b))


def _query_slice(start, query, query_meta, chunk):
  """Features and metadata of queries [start, start + chunk)."""
  q = jax.lax.dynamic_slice_in_dim(query, start, chunk)
  return q, jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk), query_meta)


def _distances_t(q, gallery, gallery_sq):
  """(G, chunk) squared distances; both paths use this one expression, so they rank alike."""
  return (gallery_sq[:, None] + jnp.sum(q * q, axis=1)[None, :]
          - 2.0 * jnp.dot(gallery, q.T, precision=jax.lax.Precision.HIGHEST))


def _dropped(index, meta, qm, frame_gap, *, exclude_self, use_frame_gap, use_cams):
  """True where a gallery item of the query's identity is ignored (self, frame gap, camera).

  `index`/`meta` (gallery) and `qm` (query) arrive already broadcastable against each other.
  """
  drop = jnp.zeros((), bool)
  if exclude_self:
    drop = drop | (index == qm["self_index"])
  if use_frame_gap:
    drop = drop | ((meta["sequence"] == qm["sequence"])
                   & (jnp.abs(meta["frame"] - qm["frame"]) <= frame_gap))
  if use_cams:
    drop = drop | (meta["camera"] == qm["camera"])
  return drop


def _summarize(keep, ranks, hits, num_gallery, axis):
  """AP, INP, first-hit rank and positive count from kept positives' ranks and hit counts."""
  num_pos = jnp.sum(keep, axis=axis, dtype=jnp.int32)
  precision = jnp.where(keep, hits / jnp.maximum(ranks, 1), 0.0)
  ap = jnp.sum(precision, axis=axis) / jnp.maximum(num_pos, 1)
  first = jnp.min(jnp.where(keep, ranks, num_gallery + 1), axis=axis)
  last = jnp.max(jnp.where(keep, ranks, 0), axis=axis)
  return ap, num_pos / jnp.maximum(last, 1), first, num_pos


def _positives(dist_t, qm, gallery_meta, table, frame_gap, **drop_options):
  """(P, chunk) gallery index (padded with G), existence, distance and kept mask of positives."""
  num_gallery = dist_t.shape[0]
  pos_index = table[qm["label"]].T
  exists = pos_index < num_gallery
  safe_index = jnp.minimum(pos_index, num_gallery - 1)
  pos_dist = jnp.take_along_axis(dist_t, safe_index, axis=0)
  keep = exists & ~_dropped(pos_index, jax.tree.map(lambda a: a[safe_index], gallery_meta),
                            jax.tree.map(lambda a: a[None, :], qm), frame_gap, **drop_options)
  return pos_index, exists, pos_dist, keep


@functools.partial(
    jax.jit, static_argnames=("chunk", "exclude_self", "use_frame_gap", "use_cams"))
def _chunk_stats(start, num_steps, query, query_meta, gallery, gallery_sq, gallery_meta, table,
                 frame_gap, *, chunk, exclude_self, use_frame_gap, use_cams):
  """Per-query AP, INP, first-hit rank and positive count for queries [start, start + chunk).

  Instead of sorting each (chunk, G) distance row, it counts for every positive how many gallery
  items rank before it: only positives' ranks matter, and XLA's CPU sort is several times slower.
  That is num_steps passes over the gallery; `_search_chunk_stats` takes over for identities with
  many images. Ignored items (self, frame-gap neighbours, same camera) always share the query's
  identity, so they are dropped by subtracting them from those counts.
  """
  q, qm = _query_slice(start, query, query_meta, chunk)
  num_gallery = gallery.shape[0]
  # (G, chunk) layout: reducing over the leading axis vectorises well on CPU.
  dist_t = _distances_t(q, gallery, gallery_sq)

  pos_index, exists, pos_dist, keep = _positives(
      dist_t, qm, gallery_meta, table, frame_gap, exclude_self=exclude_self,
      use_frame_gap=use_frame_gap, use_cams=use_cams)
  gallery_index = jnp.arange(num_gallery, dtype=jnp.int32)[:, None]

  def rank_of_positive(j, carry):
    ranks, hits = carry
    dist_j, index_j = pos_dist[j][None, :], pos_index[j][None, :]
    ahead_all = jnp.sum(_before(dist_t, gallery_index, dist_j, index_j), axis=0, dtype=jnp.int32)
    ahead_pos = _before(pos_dist, pos_index, dist_j, index_j)
    ahead_ignored = jnp.sum(ahead_pos & exists & ~keep, axis=0, dtype=jnp.int32)
    ahead_kept = jnp.sum(ahead_pos & keep, axis=0, dtype=jnp.int32)
    # 1-based rank in the query's filtered ranking, and kept positives up to and including j.
    return ranks.at[j].set(1 + ahead_all - ahead_ignored), hits.at[j].set(1 + ahead_kept)

  # Rows j >= num_steps are padding for every query of the chunk; the loop skips them.
  zeros = jnp.zeros(pos_index.shape, jnp.int32)
  ranks, hits = jax.lax.fori_loop(0, num_steps, rank_of_positive, (zeros, zeros))
  return _summarize(keep, ranks, hits, num_gallery, axis=0)


@functools.partial(
    jax.jit, static_argnames=("chunk", "exclude_self", "use_frame_gap", "use_cams"))
def _search_chunk_stats(start, num_steps, num_halvings, query, query_meta, gallery, gallery_sq,
                        gallery_meta, table, frame_gap, *, chunk, exclude_self, use_frame_gap,
                        use_cams):
  """As `_chunk_stats`, in about log2(num_steps) passes over the gallery instead of num_steps.

  Each query's positives are sorted by (distance, gallery index), every gallery item finds by
  binary search how many of them rank before it, and a histogram of the negatives' positions
  gives each positive's rank. (A full sort of each (chunk, G) row would do too, but XLA's CPU
  sort with a payload takes ~150 ns per item: it only breaks even at ~500 positives.)
  """
  q, qm = _query_slice(start, query, query_meta, chunk)
  num_gallery = gallery.shape[0]
  dist_t = _distances_t(q, gallery, gallery_sq)  # (G, chunk)
  pos_index, exists, pos_dist, keep = _positives(
      dist_t, qm, gallery_meta, table, frame_gap, exclude_self=exclude_self,
      use_frame_gap=use_frame_gap, use_cams=use_cams)
  # Padding (distance inf, index G) sorts after every real item.
  pos_dist = jnp.where(exists, pos_dist, jnp.inf)
  pos_dist, pos_index, keep = jax.lax.sort((pos_dist, pos_index, keep), dimension=0, num_keys=2)

  gallery_index = jnp.arange(num_gallery, dtype=jnp.int32)[:, None]

  def halve(_, bounds):
    # Invariant: the sorted positives [0, lo) rank before the gallery item, [hi, P) after it.
    lo, hi = bounds
    mid = jnp.minimum((lo + hi) // 2, pos_index.shape[0] - 1)
    ahead = _before(jnp.take_along_axis(pos_dist, mid, axis=0),
                    jnp.take_along_axis(pos_index, mid, axis=0), dist_t, gallery_index)
    return jnp.where(ahead, mid + 1, lo), jnp.where(ahead, hi, mid)

  lo = jnp.zeros(dist_t.shape, jnp.int32)
  lo, _ = jax.lax.fori_loop(0, num_halvings, halve, (lo, jnp.full_like(lo, num_steps)))
  # Negatives ranked before sorted positive j are those with lo <= j.
  negative = gallery_meta["label"][:, None] != qm["label"][None, :]
  column = jnp.arange(chunk, dtype=jnp.int32)[None, :]
  histogram = jnp.zeros((pos_index.shape[0] + 1, chunk), jnp.int32).at[lo, column].add(
      negative.astype(jnp.int32))
  hits = jnp.cumsum(keep, axis=0, dtype=jnp.int32)
  ranks = jnp.cumsum(histogram, axis=0)[:-1] + hits
  return _summarize(keep, ranks, hits, num_gallery, axis=0)


# ---- Public API ----


def retrieval_stats(query: np.ndarray | jax.Array, query_labels: np.ndarray,
                    gallery: np.ndarray | jax.Array | None = None,
                    gallery_labels: np.ndarray | None = None, *,
                    query_frames=None, gallery_frames=None,
                    query_sequences=None, gallery_sequences=None,
                    frame_gap: int | None = None, query_cams=None, gallery_cams=None,
                    chunk_size: int = 1024) -> dict[str, np.ndarray]:
  """Per-query 'ap', 'inp', 'first_rank' and 'num_positives', in query order.

  Arguments as `retrieval_metrics`; a query with num_positives == 0 has no defined AP (it is 0).
  """
  query = _features(query, "query")
  num_query = len(query)
  query_labels = _column(query_labels, num_query, "query_labels")
  all_vs_all = gallery is None
  if all_vs_all:
    given = [n for n, v in [("gallery_labels", gallery_labels), ("gallery_frames", gallery_frames),
                            ("gallery_sequences", gallery_sequences),
                            ("gallery_cams", gallery_cams)] if v is not None]
    if given:
      raise ValueError(f"{', '.join(given)} given without a gallery (all-vs-all uses query_*)")
    gallery, gallery_labels = query, query_labels
    gallery_frames, gallery_sequences = query_frames, query_sequences
    gallery_cams = query_cams
  else:
    gallery = _features(gallery, "gallery")
    if gallery.shape[1] != query.shape[1]:
      raise ValueError(f"query has dimension {query.shape[1]}, gallery {gallery.shape[1]}")
    if gallery_labels is None:
      raise ValueError("gallery_labels is required with a gallery")
  num_gallery = len(gallery)
  gallery_labels = _column(gallery_labels, num_gallery, "gallery_labels")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")

  zeros_q, zeros_g = np.zeros(num_query, np.int32), np.zeros(num_gallery, np.int32)
  q_label, g_label = _encode(query_labels, gallery_labels)
  query_meta = {"label": q_label, "frame": zeros_q, "sequence": zeros_q, "camera": zeros_q,
                "self_index": np.arange(num_query, dtype=np.int32)}
  gallery_meta = {"label": g_label, "frame": zeros_g, "sequence": zeros_g, "camera": zeros_g}

  use_frame_gap = frame_gap is not None
  if use_frame_gap:
    if frame_gap < 0:
      raise ValueError(f"frame_gap must be >= 0, got {frame_gap}")
    if query_frames is None or gallery_frames is None:
      raise ValueError("frame_gap needs frames for every query and gallery item")
    for name, frames, n, meta in [("query_frames", query_frames, num_query, query_meta),
                                  ("gallery_frames", gallery_frames, num_gallery, gallery_meta)]:
      frames = _column(frames, n, name).astype(np.int64)
      if (frames < 0).any():
        raise ValueError(f"frame_gap needs known frames, but {name}[{np.argmax(frames < 0)}] "
                         f"is {frames[frames < 0][0]}")
      meta["frame"] = frames.astype(np.int32)
    if (query_sequences is None) != (gallery_sequences is None):
      raise ValueError("give sequences for both query and gallery, or for neither")
    if query_sequences is not None:
      query_meta["sequence"], gallery_meta["sequence"] = _encode(
          _column(query_sequences, num_query, "query_sequences"),
          _column(gallery_sequences, num_gallery, "gallery_sequences"))

  use_cams = query_cams is not None or gallery_cams is not None
  if use_cams:
    if query_cams is None or gallery_cams is None:
      raise ValueError("give cameras for both query and gallery, or for neither")
    query_meta["camera"], gallery_meta["camera"] = _encode(
        _column(query_cams, num_query, "query_cams"),
        _column(gallery_cams, num_gallery, "gallery_cams"))

  table = _positive_table(g_label, int(max(q_label.max(), g_label.max())) + 1)
  # Queries with few positives share chunks, so each chunk loops only over as many positive slots
  # as its largest identity needs (or, past SEARCH_ABOVE, binary-searches that many).
  pos_count = (table[q_label] < num_gallery).sum(axis=1)
  order = np.argsort(pos_count, kind="stable")
  pos_count = pos_count[order]
  query_meta = {k: v[order] for k, v in query_meta.items()}

  chunk = min(chunk_size, num_query)
  device_gallery = jnp.asarray(gallery)
  query_args = (jnp.asarray(query[order]), jax.tree.map(jnp.asarray, query_meta))
  gallery_args = (device_gallery, jnp.sum(device_gallery * device_gallery, axis=1),
                  jax.tree.map(jnp.asarray, gallery_meta))
  device_table, device_gap = jnp.asarray(table), jnp.int32(frame_gap or 0)
  options = dict(exclude_self=all_vs_all, use_frame_gap=use_frame_gap, use_cams=use_cams)
  search_rows = max(1, min(chunk, SEARCH_PAIRS // num_gallery))
  pieces = []
  for start in range(0, num_query, chunk):
    # The last chunk is shifted back to stay full (one compiled shape); its repeats are dropped.
    shifted = min(start, num_query - chunk)
    end = shifted + chunk
    num_steps = int(pos_count[end - 1])
    if num_steps <= SEARCH_ABOVE:
      stats = _chunk_stats(shifted, num_steps, *query_args, *gallery_args, device_table,
                           device_gap, chunk=chunk, **options)
      pieces.append((start - shifted, stats))  # no host sync here, so chunks queue up on device
      continue
    for sub in range(start, end, search_rows):
      sub_shifted = min(sub, end - search_rows)
      stats = _search_chunk_stats(sub_shifted, num_steps, num_steps.bit_length(), *query_args,
                                  *gallery_args, device_table, device_gap, chunk=search_rows,
                                  **options)
      pieces.append((sub - sub_shifted, stats))
  per_query = [[], [], [], []]
  for skip, stats in pieces:
    for values, stat in zip(per_query, jax.device_get(stats), strict=True):
      values.append(stat[skip:])
  stats = {}
  for name, values in zip(("ap", "inp", "first_rank", "num_positives"), per_query, strict=True):
    stats[name] = np.empty(num_query, values[0].dtype)
    stats[name][order] = np.concatenate(values)  # back from positive-count order
  return stats


def retrieval_metrics(query: np.ndarray | jax.Array, query_labels: np.ndarray,
                      gallery: np.ndarray | jax.Array | None = None,
                      gallery_labels: np.ndarray | None = None, *,
                      query_frames=None, gallery_frames=None,
                      query_sequences=None, gallery_sequences=None,
                      frame_gap: int | None = None, query_cams=None, gallery_cams=None,
                      ranks: Sequence[int] = (1, 5, 10, 20),
                      chunk_size: int = 1024) -> dict[str, float]:
  """mAP, mINP and CMC of squared-Euclidean retrieval; gallery None means all-vs-all on `query`."""
  if not ranks or min(ranks) < 1:
    raise ValueError(f"ranks must be positive, got {tuple(ranks)}")
  stats = retrieval_stats(query, query_labels, gallery, gallery_labels,
                          query_frames=query_frames, gallery_frames=gallery_frames,
                          query_sequences=query_sequences, gallery_sequences=gallery_sequences,
                          frame_gap=frame_gap, query_cams=query_cams, gallery_cams=gallery_cams,
                          chunk_size=chunk_size)
  ap, inp, first, num_pos = (stats[k] for k in ("ap", "inp", "first_rank", "num_positives"))
  num_query = len(ap)
  num_gallery = num_query if gallery is None else len(gallery)
  valid = num_pos > 0
  num_valid = int(valid.sum())
  metrics = {"mAP": float("nan"), "mINP": float("nan")}
  metrics.update({f"R{r}": float("nan") for r in ranks})
  if num_valid == 0:
    logging.warning("No query has a positive in the gallery; metrics are NaN.")
  else:
    metrics["mAP"] = float(ap[valid].astype(np.float64).mean())
    metrics["mINP"] = float(inp[valid].astype(np.float64).mean())
    for r in ranks:
      metrics[f"R{r}"] = float((first[valid] <= r).mean())
  metrics.update(num_queries=num_valid, num_skipped=num_query - num_valid, num_gallery=num_gallery)
  return metrics


def reid_metrics(embeddings, labels, *, frames=None, sequences=None, frame_gap=None,
                 **kw) -> dict[str, float]:
  """All-vs-all val metrics used during training (MMDet protocol, self excluded by index)."""
  return retrieval_metrics(embeddings, labels, query_frames=frames, query_sequences=sequences,
                           frame_gap=frame_gap, **kw)


# ---- Embedding a filelist ----


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _test_embedding(model: models.ReIDModel, variables: Any, images: jax.Array,
                    flip_tta: bool) -> jax.Array:
  """float32 test-time embedding of normalised NHWC images; flip_tta averages with the mirror."""
  embedding = model.apply(variables, images, train=False).embedding.astype(jnp.float32)
  if flip_tta:
    flipped = model.apply(variables, images[:, :, ::-1], train=False).embedding
    embedding = (embedding + flipped.astype(jnp.float32)) / 2
  return embedding


def make_embed_fn(model: models.ReIDModel, config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh, flip_tta: bool = False
                  ) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
  """A jitted (variables, uint8 batch) -> float32 test embeddings, batch sharded over the mesh.

  Embeddings are L2-normalised when config.eval.normalize (after the flip average, if any).
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))

  def embed(variables, batch):
    images = input_pipeline.normalize_images(batch['image'], model.dtype)
    emb = _test_embedding(model, variables, images, flip_tta)
    return _l2_normalize(emb) if config.eval.normalize else emb
  return jax.jit(embed, in_shardings=(replicated, data), out_shardings=data)


def embed_filelist(embed_fn: Callable, variables: Any, data: input_pipeline.FileList,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> np.ndarray:
  """Embeddings of every image of a filelist, in file order, gathered on every process."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batches = input_pipeline.eval_batches(
      data, batch_size=config.eval.batch_size, image_size=tuple(config.data.image_size),
      process_index=jax.process_index(), process_count=jax.process_count())
  out = None
  for batch in input_pipeline.prefetch_to_mesh(batches, sharding):
    emb, index, mask = multihost_utils.process_allgather(
        (embed_fn(variables, batch), batch['index'], batch['mask']), tiled=True)
    if out is None:
      out = np.zeros((data.num_images, emb.shape[1]), np.float32)
    out[index[mask]] = emb[mask]
  return out


def evaluate_filelist(embed_fn: Callable, variables: Any, data: input_pipeline.FileList,
                      config: ml_collections.ConfigDict,
                      mesh: jax.sharding.Mesh) -> dict[str, float]:
  """MMDet's all-vs-all metrics on a filelist, plus the frame-gap protocol when configured."""
  embeddings = embed_filelist(embed_fn, variables, data, config, mesh)
  metrics = reid_metrics(embeddings, data.labels)
  if config.eval.frame_gap > 0:
    meta = input_pipeline.path_metadata(data.paths)
    gap = reid_metrics(embeddings, data.labels, frames=meta['frame'],
                       sequences=meta['sequence'], frame_gap=config.eval.frame_gap)
    metrics.update({f'gap_{k}': v for k, v in gap.items()})
  return metrics


def _undecodable_image_error(data: input_pipeline.FileList, error: Exception) -> str:
  """Names the first image of `data` that TF cannot decode (only run after a failure)."""
  for path, lineno in zip(data.paths, data.lines, strict=True):
    full_path = os.path.join(data.image_root, path)
    try:
      tf.io.decode_image(tf.io.read_file(full_path), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
      return f'{data.source}:{lineno}: cannot read image {full_path} ({e.message.strip()})'
  return f'{data.source}: reading the images failed: {error}'


@functools.lru_cache(maxsize=4)
def _mesh_and_embed_fn(model: models.ReIDModel, normalize: bool,
                       flip_tta: bool) -> tuple[jax.sharding.Mesh, Callable]:
  """One mesh over all devices and its embed function, kept so repeated lists compile once."""
  mesh = jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  eval_config = ml_collections.ConfigDict({'eval': {'normalize': normalize}})
  return mesh, make_embed_fn(model, eval_config, mesh, flip_tta)


def embed_images(config: ml_collections.ConfigDict, model: models.ReIDModel, variables: Any,
                 data: input_pipeline.FileList, flip_tta: bool = False) -> np.ndarray:
  """(N, D) test embeddings of a filelist on every local device, as train.py's evaluation."""
  mesh, embed_fn = _mesh_and_embed_fn(model, bool(config.eval.normalize), flip_tta)
  config = ml_collections.ConfigDict(config.to_dict())
  # The training machine may have had another device count: round the batch up to fit this one.
  config.eval.batch_size = -(-config.eval.batch_size // jax.device_count()) * jax.device_count()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  try:
    return embed_filelist(embed_fn, jax.device_put(variables, replicated), data, config, mesh)
  except tf.errors.OpError as e:
    raise ValueError(_undecodable_image_error(data, e)) from None


# ---- Loading a trained workdir ----


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config train.py saved in workdir/config.json (num_classes resolved)."""
  if not os.path.isdir(workdir):
    raise ValueError(f'{workdir}: no such directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise ValueError(f'{path}: not found (is {workdir} a train.py workdir?)')
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  config.data.image_size = tuple(config.data.image_size)
  return config


def checkpoint_score(metrics: dict[str, float]) -> float:
  """Val mAP, which picks the 'best' checkpoint; NaN (no query had a positive) ranks last."""
  value = metrics.get('mAP', math.nan)
  return value if value is not None and math.isfinite(value) else -math.inf


def load_checkpoint(workdir: str, checkpoint: str = 'best'
                    ) -> tuple[ml_collections.ConfigDict, models.ReIDModel, dict[str, Any], int]:
  """(config, model, host variables, step) of a workdir's 'best', 'latest' or numbered checkpoint.

  Works on any topology: the checkpoint is restored onto one device whatever wrote it.
  """
  config = load_config(workdir)
  checkpoint = str(checkpoint)  # the Python API also takes a step as an int
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise ValueError(f'{directory}: no checkpoints (has training saved one yet?)')
  options = ocp.CheckpointManagerOptions(best_fn=checkpoint_score, best_mode='max',
                                         read_only=True)
  with ocp.CheckpointManager(directory, options=options) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise ValueError(f'{directory}: no checkpoints')
    if checkpoint == 'latest':
      step = steps[-1]
    elif checkpoint == 'best':
      step = manager.best_step()  # the latest one when no evaluation was recorded
    elif checkpoint.isdigit() and int(checkpoint) in steps:
      step = int(checkpoint)
    else:
      raise ValueError(f'{directory}: no checkpoint {checkpoint!r} (have best, latest, '
                       f'{", ".join(map(str, steps))})')
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = manager.restore(step, args=ocp.args.StandardRestore(fallback_sharding=device))
  model = models.create_model(config.model, config.num_classes)
  variables = jax.device_get({'params': tree['params'], 'batch_stats': tree['batch_stats']})
  return config, model, variables, step


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

    def forward(variables, images):
      normalised = input_pipeline.normalize_images(images, model.dtype)
      return _l2_normalize(_test_embedding(model, variables, normalised, flip_tta))
    self._forward = jax.jit(forward)
    probe = jax.ShapeDtypeStruct((1, *self.image_size, 3), jnp.uint8)
    self.dim = jax.eval_shape(forward, self._variables, probe).shape[1]

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = 'best', **kwargs) -> 'Embedder':
    """An Embedder for a train.py workdir's 'best', 'latest' or numbered checkpoint."""
    config, model, variables, step = load_checkpoint(workdir, checkpoint)
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


def _write_atomically(path: str, write: Callable[[Any], None]) -> None:
  """Writes via a temporary file in the same folder, so a crash never leaves half a file."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ---- Command line: evaluation ----

_CAMERA_RE = re.compile(r'-?[0-9]+_c([0-9]+)')  # Market-1501: 0001_c1s1_000151_01.jpg


def market_cameras(paths: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
  """Camera ids from Market-1501-style file names, or (None, first name that does not match)."""
  cameras = []
  for path in paths:
    match = _CAMERA_RE.match(posixpath.basename(path))
    if not match:
      return None, path
    cameras.append(int(match.group(1)))
  return np.asarray(cameras, np.int64), None


def _frame_metadata(data: input_pipeline.FileList) -> dict[str, np.ndarray]:
  """Sequences and frames for the frame-gap protocol; every path must carry its frame number."""
  meta = input_pipeline.path_metadata(data.paths)
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
  config = load_config(workdir)
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

  config, model, variables, step = load_checkpoint(workdir, checkpoint)
  result['step'] = step
  query_emb = embed_images(config, model, variables, query, flip_tta)
  if query_list:
    gallery_emb = embed_images(config, model, variables, gallery, flip_tta)
    query_cams, bad_query = market_cameras(query.paths)
    gallery_cams, bad_gallery = market_cameras(gallery.paths)
    camera_filter = query_cams is not None and gallery_cams is not None
    result['camera_filter'] = camera_filter
    if not camera_filter:
      result['camera_filter_off_because'] = (
          f'{bad_query or bad_gallery} has no <id>_c<camera> file name')
      query_cams = gallery_cams = None
    metrics = retrieval_metrics(query_emb, query.labels, gallery_emb, gallery.labels,
                                query_cams=query_cams, gallery_cams=gallery_cams)
  elif protocol == 'frame_gap':
    metrics = reid_metrics(query_emb, query.labels, frames=meta['frame'],
                           sequences=meta['sequence'], frame_gap=frame_gap)
  else:
    metrics = reid_metrics(query_emb, query.labels)
  result['metrics'] = _json_safe(metrics)

  suffix = (f'_gap{frame_gap}' if protocol == 'frame_gap' else '') + ('_flip' if flip_tta else '')
  result['output'] = os.path.join(workdir, f'eval_{name}_step{step}{suffix}.json')
  text = json.dumps(result, indent=2) + '\n'
  _write_atomically(result['output'], lambda f: f.write(text.encode()))
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
  config = load_config(workdir)
  list_path = _default_list(config, list_path)
  root = _default_image_root(config, image_root)
  data = input_pipeline.read_filelist(list_path, root)
  config, model, variables, step = load_checkpoint(workdir, checkpoint)
  output = output or os.path.join(workdir, f'embeddings_{_list_name(list_path)}_step{step}.npz')
  _check_output(output, overwrite)
  embeddings = embed_images(config, model, variables, data, flip_tta)
  embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  arrays = {'embeddings': embeddings.astype(np.float32), 'paths': np.asarray(data.paths),
            'labels': data.labels, 'step': np.int64(step), 'list': np.asarray(list_path),
            'image_root': np.asarray(root), 'flip_tta': np.bool_(flip_tta),
            'config': np.asarray(config.to_json_best_effort(sort_keys=True))}
  _write_atomically(output, lambda f: np.savez(f, **arrays))
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
  config = load_config(workdir)
  list_path = _default_list(config, list_path)
  data = input_pipeline.read_filelist(list_path, _default_image_root(config, image_root))
  if data.num_images < 2:
    raise ValueError(f'{list_path}: needs at least 2 images for a ranked list')
  config, model, variables, step = load_checkpoint(workdir, checkpoint)
  output = output or os.path.join(workdir, f'ranks_{_list_name(list_path)}_step{step}.png')
  _check_output(output, overwrite)
  embeddings = embed_images(config, model, variables, data, flip_tta)
  stats = retrieval_stats(embeddings, data.labels)
  valid = stats['num_positives'] > 0
  if not valid.any():
    raise ValueError(f'{list_path}: no image shares its identity with another; nothing to rank')
  queries = choose_queries(stats['ap'], valid, num_queries, seed, worst)
  ranked, distances = rank_gallery(embeddings, queries, min(top_k, data.num_images - 1))
  picture = draw_ranked_lists(data, queries, ranked, distances, stats['ap'],
                              config.data.image_size)
  _write_atomically(output, lambda f: picture.save(f, format='PNG'))
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


class QuietOrbax(std_logging.Filter):
  """Drops orbax's log records below `level` (per-save progress, read-only notices)."""

  # Logged for every save without val metrics, i.e. every save between evaluations: expected.
  EXPECTED = 'did not provide metrics'

  def __init__(self, level: int = std_logging.ERROR):
    super().__init__()
    self.level = level

  def filter(self, record: std_logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    return record.levelno >= self.level and self.EXPECTED not in record.getMessage()


def parse_flags(argv: list[str]) -> list[str]:
  """Parses the command line; a bad flag value is one `error:` line, as every other error."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(QuietOrbax())
  try:
    print(run(FLAGS))
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
