"""ReID retrieval metrics: mAP, CMC rank-k and mINP, computed on the JAX device in query chunks.

Protocols: MMDet all-vs-all on one list (every image queries all *other* images, self excluded by
index), an optional frame-gap filter that ignores same-track neighbours, and query/gallery mode
with the Market-1501 camera filter. Pure functions: no flags, no files.
"""

import functools
import posixpath
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Query chunks whose largest identity has more gallery images than this are ranked by binary
# search instead of counting: the break-even on a 2-core CPU was ~135 at G = 5k, ~80 at G = 20k.
SEARCH_ABOVE = 100
SEARCH_PAIRS = 1 << 20  # (gallery item, query) pairs per binary-search chunk: bounds its memory

# ---- Host-side input checks and encoding ----


def _features(x, name: str) -> np.ndarray:
  """Returns `x` as a finite float32 (N, D) host array."""
  x = np.asarray(jax.device_get(x), dtype=np.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f'{name} must be a non-empty (N, D) array, got shape {x.shape}')
  if not np.isfinite(x).all():
    raise ValueError(f'{name} contains NaN or inf')
  return x


def _column(x, n: int, name: str) -> np.ndarray:
  """Returns `x` as a host array of length `n`."""
  x = np.asarray(jax.device_get(x))
  if x.shape != (n,):
    raise ValueError(f'{name} must have shape ({n},), got {x.shape}')
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
  order = np.argsort(gallery_labels, kind='stable')
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
    drop = drop | (index == qm['self_index'])
  if use_frame_gap:
    drop = drop | ((meta['sequence'] == qm['sequence'])
                   & (jnp.abs(meta['frame'] - qm['frame']) <= frame_gap))
  if use_cams:
    drop = drop | (meta['camera'] == qm['camera'])
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
  pos_index = table[qm['label']].T
  exists = pos_index < num_gallery
  safe_index = jnp.minimum(pos_index, num_gallery - 1)
  pos_dist = jnp.take_along_axis(dist_t, safe_index, axis=0)
  keep = exists & ~_dropped(pos_index, jax.tree.map(lambda a: a[safe_index], gallery_meta),
                            jax.tree.map(lambda a: a[None, :], qm), frame_gap, **drop_options)
  return pos_index, exists, pos_dist, keep


@functools.partial(
    jax.jit, static_argnames=('chunk', 'exclude_self', 'use_frame_gap', 'use_cams'))
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
    jax.jit, static_argnames=('chunk', 'exclude_self', 'use_frame_gap', 'use_cams'))
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
  negative = gallery_meta['label'][:, None] != qm['label'][None, :]
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
  query = _features(query, 'query')
  num_query = len(query)
  query_labels = _column(query_labels, num_query, 'query_labels')
  all_vs_all = gallery is None
  if all_vs_all:
    given = [n for n, v in [('gallery_labels', gallery_labels), ('gallery_frames', gallery_frames),
                            ('gallery_sequences', gallery_sequences),
                            ('gallery_cams', gallery_cams)] if v is not None]
    if given:
      raise ValueError(f"{', '.join(given)} given without a gallery (all-vs-all uses query_*)")
    gallery, gallery_labels = query, query_labels
    gallery_frames, gallery_sequences = query_frames, query_sequences
    gallery_cams = query_cams
  else:
    gallery = _features(gallery, 'gallery')
    if gallery.shape[1] != query.shape[1]:
      raise ValueError(f'query has dimension {query.shape[1]}, gallery {gallery.shape[1]}')
    if gallery_labels is None:
      raise ValueError('gallery_labels is required with a gallery')
  num_gallery = len(gallery)
  gallery_labels = _column(gallery_labels, num_gallery, 'gallery_labels')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be positive, got {chunk_size}')

  zeros_q, zeros_g = np.zeros(num_query, np.int32), np.zeros(num_gallery, np.int32)
  q_label, g_label = _encode(query_labels, gallery_labels)
  query_meta = {'label': q_label, 'frame': zeros_q, 'sequence': zeros_q, 'camera': zeros_q,
                'self_index': np.arange(num_query, dtype=np.int32)}
  gallery_meta = {'label': g_label, 'frame': zeros_g, 'sequence': zeros_g, 'camera': zeros_g}

  use_frame_gap = frame_gap is not None
  if use_frame_gap:
    if frame_gap < 0:
      raise ValueError(f'frame_gap must be >= 0, got {frame_gap}')
    if query_frames is None or gallery_frames is None:
      raise ValueError('frame_gap needs frames for every query and gallery item')
    for name, frames, n, meta in [('query_frames', query_frames, num_query, query_meta),
                                  ('gallery_frames', gallery_frames, num_gallery, gallery_meta)]:
      frames = _column(frames, n, name).astype(np.int64)
      if (frames < 0).any():
        raise ValueError(f'frame_gap needs known frames, but {name}[{np.argmax(frames < 0)}] '
                         f'is {frames[frames < 0][0]}')
      meta['frame'] = frames.astype(np.int32)
    if (query_sequences is None) != (gallery_sequences is None):
      raise ValueError('give sequences for both query and gallery, or for neither')
    if query_sequences is not None:
      query_meta['sequence'], gallery_meta['sequence'] = _encode(
          _column(query_sequences, num_query, 'query_sequences'),
          _column(gallery_sequences, num_gallery, 'gallery_sequences'))

  use_cams = query_cams is not None or gallery_cams is not None
  if use_cams:
    if query_cams is None or gallery_cams is None:
      raise ValueError('give cameras for both query and gallery, or for neither')
    query_meta['camera'], gallery_meta['camera'] = _encode(
        _column(query_cams, num_query, 'query_cams'),
        _column(gallery_cams, num_gallery, 'gallery_cams'))

  table = _positive_table(g_label, int(max(q_label.max(), g_label.max())) + 1)
  # Queries with few positives share chunks, so each chunk loops only over as many positive slots
  # as its largest identity needs (or, past SEARCH_ABOVE, binary-searches that many).
  pos_count = (table[q_label] < num_gallery).sum(axis=1)
  order = np.argsort(pos_count, kind='stable')
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
  for name, values in zip(('ap', 'inp', 'first_rank', 'num_positives'), per_query, strict=True):
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
    raise ValueError(f'ranks must be positive, got {tuple(ranks)}')
  stats = retrieval_stats(query, query_labels, gallery, gallery_labels,
                          query_frames=query_frames, gallery_frames=gallery_frames,
                          query_sequences=query_sequences, gallery_sequences=gallery_sequences,
                          frame_gap=frame_gap, query_cams=query_cams, gallery_cams=gallery_cams,
                          chunk_size=chunk_size)
  ap, inp, first, num_pos = (stats[k] for k in ('ap', 'inp', 'first_rank', 'num_positives'))
  num_query = len(ap)
  num_gallery = num_query if gallery is None else len(gallery)
  valid = num_pos > 0
  num_valid = int(valid.sum())
  metrics = {'mAP': float('nan'), 'mINP': float('nan')}
  metrics.update({f'R{r}': float('nan') for r in ranks})
  if num_valid == 0:
    logging.warning('No query has a positive in the gallery; metrics are NaN.')
  else:
    metrics['mAP'] = float(ap[valid].astype(np.float64).mean())
    metrics['mINP'] = float(inp[valid].astype(np.float64).mean())
    for r in ranks:
      metrics[f'R{r}'] = float((first[valid] <= r).mean())
  metrics.update(num_queries=num_valid, num_skipped=num_query - num_valid, num_gallery=num_gallery)
  return metrics


def reid_metrics(embeddings, labels, *, frames=None, sequences=None, frame_gap=None,
                 **kw) -> dict[str, float]:
  """All-vs-all val metrics used during training (MMDet protocol, self excluded by index)."""
  return retrieval_metrics(embeddings, labels, query_frames=frames, query_sequences=sequences,
                           frame_gap=frame_gap, **kw)


# ---- Metadata from file names ----


def path_metadata(paths: Sequence[str]) -> dict[str, np.ndarray]:
  """Identity folder, sequence and frame number parsed from `<SEQ>_<id>/<frame>.jpg` paths.

  identity: first path component ('' for a file directly in the image root); sequence: the identity
  minus a trailing '_<digits>' when present, else the identity; frame: int(file stem) when the stem
  is all digits, else -1.
  """
  identities, sequences, frames = [], [], []
  for path in paths:
    parts = posixpath.normpath(path).split('/')
    identity = parts[0] if len(parts) > 1 else ''
    match = re.fullmatch(r'(.+)_[0-9]+', identity)
    stem = posixpath.splitext(parts[-1])[0]
    identities.append(identity)
    sequences.append(match.group(1) if match else identity)
    frames.append(int(stem) if re.fullmatch(r'[0-9]+', stem) else -1)
  return {'identity': np.asarray(identities, dtype=str),
          'sequence': np.asarray(sequences, dtype=str),
          'frame': np.asarray(frames, np.int64)}


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


def query_gallery_metrics(query: np.ndarray, query_labels: np.ndarray, query_paths: Sequence[str],
                          gallery: np.ndarray, gallery_labels: np.ndarray,
                          gallery_paths: Sequence[str]) -> tuple[dict[str, float], str | None]:
  """Query/gallery metrics with the Market-1501 camera filter when every file name has a camera.

  Returns the metrics and None, or, with the filter off, the first file name without a camera.
  """
  query_cams, bad_query = market_cameras(query_paths)
  gallery_cams, bad_gallery = market_cameras(gallery_paths)
  no_camera = bad_query or bad_gallery
  if no_camera is not None:
    query_cams = gallery_cams = None
  scores = retrieval_metrics(query, query_labels, gallery, gallery_labels,
                             query_cams=query_cams, gallery_cams=gallery_cams)
  return scores, no_camera


# ---- Formatting ----


def format_metrics(metrics: dict[str, float]) -> str:
  """'mAP 61.2 R1 80.3 ...' for the log."""
  keys = ['mAP', 'R1', 'R5', 'R10', 'R20', 'mINP']
  text = ' '.join(f'{k} {100 * metrics[k]:.1f}' for k in keys if k in metrics)
  if 'gap_mAP' in metrics:
    text += ' | frame-gap: ' + ' '.join(f'{k} {100 * metrics["gap_" + k]:.1f}' for k in keys)
  return text


# ---- Appearance-distance calibration for trackers ----

CALIBRATION_PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def appearance_distances(features: np.ndarray, identities: Sequence[str], sequences: Sequence[str],
                         frames: Sequence[int], gap: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Cosine distances a tracker's appearance gate sees: (same track, nearest other person).

  same track: every pair of one identity's crops exactly `gap` frames apart. nearest other: for
  every crop, the smallest distance to a crop of another identity of its sequence within +-`gap`
  frames (crops with no such neighbour give none). Features are L2-normalised here.
  """
  if gap < 1:
    raise ValueError(f'gap must be >= 1, got {gap}')
  x = _features(features, 'features').astype(np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  identities = np.asarray(_column(identities, len(x), 'identities'), dtype=str)
  sequences = np.asarray(_column(sequences, len(x), 'sequences'), dtype=str)
  frames = np.asarray(_column(frames, len(x), 'frames'), dtype=np.int64)

  # Same track: look each crop's (identity, frame + gap) up among all (identity, frame) keys.
  _, identity_ids = np.unique(identities, return_inverse=True)
  keys = identity_ids.astype(np.int64) * (int(frames.max()) + gap + 1) + frames
  order = np.argsort(keys, kind='stable')
  wanted = keys + gap
  at = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
  found = keys[order][at] == wanted
  first, second = np.nonzero(found)[0], order[at[found]]
  same = 1.0 - np.einsum('ij,ij->i', x[first], x[second])

  # Nearest other identity: per sequence and frame, against the crops of the window.
  nearest = []
  for sequence in np.unique(sequences):
    rows = np.nonzero(sequences == sequence)[0]
    for frame in np.unique(frames[rows]):
      query = rows[frames[rows] == frame]
      window = rows[np.abs(frames[rows] - frame) <= gap]
      dist = 1.0 - x[query] @ x[window].T
      dist[identities[query][:, None] == identities[window][None, :]] = np.inf
      best = dist.min(axis=1)
      nearest.append(best[np.isfinite(best)])
  nearest = np.concatenate(nearest) if nearest else np.zeros(0)
  return same.astype(np.float64), nearest.astype(np.float64)


def separating_gate(same: np.ndarray, other: np.ndarray) -> float:
  """The distance threshold with the lowest balanced error: same-track pairs above it count as
  misses, nearest-other pairs at or below it as false matches (each as a fraction of its kind)."""
  same, other = np.sort(np.asarray(same, np.float64)), np.sort(np.asarray(other, np.float64))
  if not len(same) or not len(other):
    raise ValueError('separating_gate needs at least one distance of each kind')
  # Candidates: midpoints between consecutive distinct values of both kinds, and both ends.
  values = np.unique(np.concatenate([same, other]))
  candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2,
                               [values[-1] + 1e-6]])
  missed = 1.0 - np.searchsorted(same, candidates, side='right') / len(same)
  false = np.searchsorted(other, candidates, side='right') / len(other)
  return float(candidates[np.argmin(missed + false)])


def appearance_distance_percentiles(features: np.ndarray, identities: Sequence[str],
                                    sequences: Sequence[str], frames: Sequence[int], gap: int = 1,
                                    percentiles: Sequence[float] = CALIBRATION_PERCENTILES
                                    ) -> dict[str, object]:
  """Percentiles of both appearance_distances kinds, the separating gate and its error rates."""
  same, other = appearance_distances(features, identities, sequences, frames, gap)
  if not len(same) or not len(other):
    raise ValueError(f'no crop pairs {gap} frame(s) apart' if not len(same)
                     else f'no other person within {gap} frame(s) of any crop')
  gate = separating_gate(same, other)

  def table(d):
    return {f'p{q:g}': float(v) for q, v in zip(percentiles, np.percentile(d, percentiles),
                                                strict=True)}
  return {
      'gap_frames': gap,
      'same_track': {'count': len(same), **table(same)},
      'nearest_other': {'count': len(other), **table(other)},
      'gate': gate,
      'same_track_above_gate': float(np.mean(same > gate)),
      'nearest_other_at_or_below_gate': float(np.mean(other <= gate)),
  }
