"""ReID retrieval metrics (mAP, CMC rank-k, mINP), computed on the JAX device in query chunks.

Protocols (see README): MMDet all-vs-all on the val list (every image queries all *other* images,
self excluded by index), an optional frame-gap filter for same-track neighbours, and query/gallery
mode with the Market-1501 camera filter. The command-line evaluator comes later.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

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


@functools.partial(
    jax.jit, static_argnames=("chunk", "exclude_self", "use_frame_gap", "use_cams"))
def _chunk_stats(start, num_steps, query, query_meta, gallery, gallery_sq, gallery_meta, table,
                 frame_gap, *, chunk, exclude_self, use_frame_gap, use_cams):
  """Per-query AP, INP, first-hit rank and positive count for queries [start, start + chunk).

  Instead of sorting each (chunk, G) distance row, it counts for every positive how many gallery
  items rank before it: only positives' ranks matter, and XLA's CPU sort is several times slower.
  Ignored items (self, frame-gap neighbours, same camera) always share the query's identity, so
  they are dropped by subtracting them from those counts.
  """
  q = jax.lax.dynamic_slice_in_dim(query, start, chunk)
  qm = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk), query_meta)
  num_gallery = gallery.shape[0]
  # (G, chunk) layout: reducing over the leading axis vectorises well on CPU.
  dist_t = (gallery_sq[:, None] + jnp.sum(q * q, axis=1)[None, :]
            - 2.0 * jnp.dot(gallery, q.T, precision=jax.lax.Precision.HIGHEST))

  pos_index = table[qm["label"]].T  # (P, chunk), padded with num_gallery
  exists = pos_index < num_gallery
  safe_index = jnp.minimum(pos_index, num_gallery - 1)
  pos_dist = jnp.take_along_axis(dist_t, safe_index, axis=0)
  keep = exists
  if exclude_self:
    keep &= pos_index != qm["self_index"][None, :]
  if use_frame_gap:
    same_sequence = gallery_meta["sequence"][safe_index] == qm["sequence"][None, :]
    gap = jnp.abs(gallery_meta["frame"][safe_index] - qm["frame"][None, :])
    keep &= ~(same_sequence & (gap <= frame_gap))
  if use_cams:
    keep &= gallery_meta["camera"][safe_index] != qm["camera"][None, :]

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
  num_pos = jnp.sum(keep, axis=0, dtype=jnp.int32)
  ap = jnp.sum(jnp.where(keep, hits / jnp.maximum(ranks, 1), 0.0), axis=0) / jnp.maximum(num_pos, 1)
  first = jnp.min(jnp.where(keep, ranks, num_gallery + 1), axis=0)
  last = jnp.max(jnp.where(keep, ranks, 0), axis=0)
  inp = num_pos / jnp.maximum(last, 1)
  return ap, inp, first, num_pos


# ---- Public API ----


def retrieval_metrics(query: np.ndarray | jax.Array, query_labels: np.ndarray,
                      gallery: np.ndarray | jax.Array | None = None,
                      gallery_labels: np.ndarray | None = None, *,
                      query_frames=None, gallery_frames=None,
                      query_sequences=None, gallery_sequences=None,
                      frame_gap: int | None = None, query_cams=None, gallery_cams=None,
                      ranks: Sequence[int] = (1, 5, 10, 20),
                      chunk_size: int = 1024) -> dict[str, float]:
  """mAP, mINP and CMC of squared-Euclidean retrieval; gallery None means all-vs-all on `query`."""
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
  if not ranks or min(ranks) < 1:
    raise ValueError(f"ranks must be positive, got {tuple(ranks)}")

  zeros_q, zeros_g = np.zeros(num_query, np.int32), np.zeros(num_gallery, np.int32)
  q_label, g_label = _encode(query_labels, gallery_labels)
  query_meta = {"label": q_label, "frame": zeros_q, "sequence": zeros_q, "camera": zeros_q,
                "self_index": np.arange(num_query, dtype=np.int32)}
  gallery_meta = {"frame": zeros_g, "sequence": zeros_g, "camera": zeros_g}

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
  # as its largest identity needs.
  pos_count = (table[q_label] < num_gallery).sum(axis=1)
  order = np.argsort(pos_count, kind="stable")
  pos_count = pos_count[order]
  query_meta = {k: v[order] for k, v in query_meta.items()}

  chunk = min(chunk_size, num_query)
  device_gallery = jnp.asarray(gallery)
  args = (jnp.asarray(query[order]), jax.tree.map(jnp.asarray, query_meta), device_gallery,
          jnp.sum(device_gallery * device_gallery, axis=1), jax.tree.map(jnp.asarray, gallery_meta),
          jnp.asarray(table), jnp.int32(frame_gap or 0))
  static = dict(chunk=chunk, exclude_self=all_vs_all, use_frame_gap=use_frame_gap,
                use_cams=use_cams)
  pieces = []
  for start in range(0, num_query, chunk):
    # The last chunk is shifted back to stay full (one compiled shape); its repeats are dropped.
    shifted = min(start, num_query - chunk)
    stats = _chunk_stats(shifted, int(pos_count[shifted + chunk - 1]), *args, **static)
    pieces.append((start - shifted, stats))  # no host sync here, so chunks queue up on device
  per_query = [[], [], [], []]
  for skip, stats in pieces:
    for values, stat in zip(per_query, jax.device_get(stats), strict=True):
      values.append(stat[skip:])
  ap, inp, first, num_pos = (np.concatenate(values) for values in per_query)

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
