"""Tests for metrics.py: hand-computed rankings and a NumPy port of the reference formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

import metrics

# ---- Hand-computed cases (1-D features, so squared distances are easy to write out) ----


def test_ties_are_ordered_by_index_and_self_never_counts():
  # x = 0, 0, 0, 1 with labels A, B, A, B; identical features tie, ties go by gallery index.
  # q0 (A): 1(B,d0) 2(A,d0) 3(B,d1) -> positive at rank 2: AP 1/2, INP 1/2, miss at R1.
  # q1 (B): 0(A,0) 2(A,0) 3(B,1)    -> rank 3: AP 1/3.
  # q2 (A): 0(A,0) 1(B,0) 3(B,1)    -> rank 1: AP 1.
  # q3 (B): 0(A,1) 1(B,1) 2(A,1)    -> rank 2: AP 1/2.
  # mAP = mINP = (1/2 + 1/3 + 1 + 1/2) / 4 = 7/12; R1 = 1/4; gallery of 3 < 5 -> R5..R20 = 1.
  # (MMDet drops the first-ranked item instead of self, so a tie can count self as a hit.)
  m = metrics.reid_metrics(np.array([[0.0], [0.0], [0.0], [1.0]]), np.array(list("ABAB")))
  assert m["mAP"] == pytest.approx(7 / 12, abs=1e-6)
  assert m["mINP"] == pytest.approx(7 / 12, abs=1e-6)
  assert m["R1"] == pytest.approx(0.25)
  assert m["R5"] == m["R10"] == m["R20"] == 1.0
  assert (m["num_queries"], m["num_skipped"], m["num_gallery"]) == (4, 0, 4)


def test_queries_without_positives_are_skipped_and_small_gallery_works():
  # x = 0, 1, 3, 2.5, 10 with labels 0, 0, 1, 0, 2: items 2 and 4 have no positive -> skipped.
  # q0 (x0):   1(A,1) 3(A,6.25) 2(B,9) 4   -> ranks 1,2: AP 1, INP 1.
  # q1 (x1):   0(A,1) 3(A,2.25) 2(B,4) 4   -> ranks 1,2: AP 1, INP 1.
  # q3 (x2.5): 2(B,.25) 1(A,2.25) 0(A,6.25) -> ranks 2,3: AP (1/2 + 2/3)/2 = 7/12, INP 2/3.
  # mAP = (1 + 1 + 7/12)/3 = 31/36; mINP = (1 + 1 + 2/3)/3 = 8/9; R1 = 2/3; R5.. = 1 (gallery 4).
  x = np.array([[0.0], [1.0], [3.0], [2.5], [10.0]])
  m = metrics.reid_metrics(x, np.array([0, 0, 1, 0, 2]))
  assert m["mAP"] == pytest.approx(31 / 36, abs=1e-6)
  assert m["mINP"] == pytest.approx(8 / 9, abs=1e-6)
  assert m["R1"] == pytest.approx(2 / 3)
  assert m["R5"] == m["R20"] == 1.0
  assert (m["num_queries"], m["num_skipped"], m["num_gallery"]) == (3, 2, 5)


def test_frame_gap_ignores_same_track_neighbours_in_the_same_sequence():
  # idx: x, label, sequence, frame; frame_gap = 2.
  # 0: 0,    A, S1, 1 | 1: 0.5, A, S1, 2 | 2: 3, A, S1, 10 | 3: 1, B, S1, 1 | 4: 5, B, S1, 5
  # 5: 0.25, A, S2, 2 (different sequence: never ignored)
  # q0: ignores 1 -> 5(A) 3(B) 2(A) 4       ranks 1,3:   AP (1 + 2/3)/2 = 5/6, INP 2/3
  # q1: ignores 0 -> 5(A) 3(B) 2(A) 4       ranks 1,3:   AP 5/6, INP 2/3
  # q2: nothing   -> 3(B,4) 4(B,4) 1 5 0    ranks 3,4,5: AP (1/3 + 2/4 + 3/5)/3 = 43/90, INP 3/5
  # q3: 1 5 0 2 4(B)                        rank 5:      AP 1/5, INP 1/5
  # q4: 2(A) 3(B) ...                       rank 2:      AP 1/2, INP 1/2
  # q5: 0(A) 1(A) tie by index, 3(B), 2(A)  ranks 1,2,4: AP (1 + 1 + 3/4)/3 = 11/12, INP 3/4
  # mAP = 677/1080, mINP = 203/360, first hits 1,1,3,5,2,1 -> R1 = 3/6, R2 = 4/6, R5 = 1.
  x = np.array([[0.0], [0.5], [3.0], [1.0], [5.0], [0.25]])
  labels = np.array(list("AAABBA"))
  sequences = np.array(["S1"] * 5 + ["S2"])
  frames = np.array([1, 2, 10, 1, 5, 2])
  m = metrics.reid_metrics(x, labels, frames=frames, sequences=sequences, frame_gap=2,
                            ranks=(1, 2, 5))
  assert m["mAP"] == pytest.approx(677 / 1080, abs=1e-6)
  assert m["mINP"] == pytest.approx(203 / 360, abs=1e-6)
  assert (m["R1"], m["R2"], m["R5"]) == pytest.approx((3 / 6, 4 / 6, 1.0))
  # Without the filter q0's neighbour 1 is its nearest positive, so the numbers go up.
  assert metrics.reid_metrics(x, labels)["mAP"] > m["mAP"]


def test_frame_gap_needs_known_frames():
  x, labels = np.zeros((3, 2)), np.array([0, 0, 1])
  with pytest.raises(ValueError, match=r"frames\[1\] is -1"):
    metrics.reid_metrics(x, labels, frames=np.array([3, -1, 5]), frame_gap=1)
  with pytest.raises(ValueError, match="needs frames"):
    metrics.reid_metrics(x, labels, frame_gap=1)


def test_query_gallery_mode_with_camera_filter():
  # queries: q0 x0 A cam1, q1 x10 B cam2; gallery: g0 x0 A c1, g1 x1 B c1, g2 x2 A c2, g3 x3 A c1.
  # Camera filter drops g0 and g3 for q0 (same id, same camera):
  #   q0: g1(B,1) g2(A,4)        -> rank 2: AP 1/2
  #   q1: g3 g2 g1(B,81) g0      -> rank 3: AP 1/3
  #   mAP = mINP = 5/12, R1 = 0.
  # No filter, and no self exclusion in query/gallery mode (g0 equals q0 but is a real match):
  #   q0: g0(A) g1(B) g2(A) g3(A) -> ranks 1,3,4: AP (1 + 2/3 + 3/4)/3 = 29/36, INP 3/4
  #   mAP = (29/36 + 1/3)/2 = 41/72, R1 = 1/2.
  query = np.array([[0.0], [10.0]])
  gallery = np.array([[0.0], [1.0], [2.0], [3.0]])
  q_labels, g_labels = np.array([7, 8]), np.array([7, 8, 7, 7])
  m = metrics.retrieval_metrics(query, q_labels, gallery, g_labels,
                                 query_cams=np.array([1, 2]), gallery_cams=np.array([1, 1, 2, 1]))
  assert m["mAP"] == pytest.approx(5 / 12, abs=1e-6)
  assert m["mINP"] == pytest.approx(5 / 12, abs=1e-6)
  assert m["R1"] == 0.0 and m["R5"] == 1.0
  assert (m["num_queries"], m["num_gallery"]) == (2, 4)
  m = metrics.retrieval_metrics(query, q_labels, gallery, g_labels)
  assert m["mAP"] == pytest.approx(41 / 72, abs=1e-6)
  assert m["mINP"] == pytest.approx((3 / 4 + 1 / 3) / 2, abs=1e-6)
  assert m["R1"] == 0.5


def test_no_valid_query_gives_nan_not_a_crash():
  m = metrics.reid_metrics(np.eye(3), np.array([0, 1, 2]))
  assert np.isnan(m["mAP"]) and np.isnan(m["R1"])
  assert (m["num_queries"], m["num_skipped"]) == (0, 3)


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match="query_labels must have shape"):
    metrics.reid_metrics(np.zeros((3, 2)), np.array([0, 1]))
  with pytest.raises(ValueError, match="NaN or inf"):
    metrics.reid_metrics(np.array([[0.0], [np.nan]]), np.array([0, 0]))
  with pytest.raises(ValueError, match="dimension"):
    metrics.retrieval_metrics(np.zeros((2, 2)), np.array([0, 1]), np.zeros((2, 3)),
                               np.array([0, 1]))


# ---- Random data against a plain NumPy port of the reference's per-query loop ----


def _numpy_reference(query, q_labels, gallery, g_labels, ignore, ranks=(1, 5, 10, 20)):
  """Reference formulas per query; `ignore(q)` gives the gallery indices removed for query q."""
  dist = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
  aps, inps, firsts = [], [], []
  for q in range(len(query)):
    order = np.argsort(dist[q], kind="stable")  # ties by gallery index
    order = order[~np.isin(order, ignore(q))]
    matches = (g_labels[order] == q_labels[q]).astype(np.float64)
    if not matches.any():
      continue
    hits = matches.cumsum()
    precision = hits / np.arange(1, len(matches) + 1)
    aps.append((precision * matches).sum() / matches.sum())
    inps.append(matches.sum() / (np.flatnonzero(matches)[-1] + 1))
    firsts.append(np.flatnonzero(matches)[0] + 1)
  result = {"mAP": np.mean(aps), "mINP": np.mean(inps), "num_queries": len(aps)}
  result.update({f"R{r}": np.mean(np.array(firsts) <= r) for r in ranks})
  return result


def _random_items(seed, n=300, num_ids=30, dim=16):
  # Small integer features: distances are exact in float32, and ties are common.
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_ids, n)
  centres = rng.integers(-2, 3, (num_ids, dim))
  x = (centres[labels] + rng.integers(-2, 3, (n, dim))).astype(np.float32)
  return rng, x, labels


def _assert_close(ours, ref):
  assert ours["num_queries"] == ref["num_queries"]
  for key in ["mAP", "mINP", "R1", "R5", "R10", "R20"]:
    assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_all_vs_all_matches_numpy_reference():
  _, x, labels = _random_items(0)
  ref = _numpy_reference(x, labels, x, labels, ignore=lambda q: [q])
  ours = metrics.reid_metrics(jnp.asarray(x), labels)
  _assert_close(ours, ref)
  assert 0.05 < ref["mAP"] < 0.95  # the data is neither trivial nor hopeless


def _frame_gap_ignore(labels, sequences, frames, gap):
  """The reference's ignore rule: self, and same-identity items within ±gap frames in a sequence."""
  def ignore(q):
    near = ((labels == labels[q]) & (sequences == sequences[q])
            & (np.abs(frames - frames[q]) <= gap))
    return np.flatnonzero(near | (np.arange(len(labels)) == q))
  return ignore


def test_frame_gap_matches_numpy_reference():
  rng, x, labels = _random_items(1)
  frames, sequences = rng.integers(0, 40, len(x)), rng.choice(["S1", "S2"], len(x))

  ref = _numpy_reference(x, labels, x, labels, _frame_gap_ignore(labels, sequences, frames, 3))
  _assert_close(metrics.reid_metrics(x, labels, frames=frames, sequences=sequences,
                                      frame_gap=3), ref)


def test_query_gallery_cameras_match_numpy_reference():
  rng, x, labels = _random_items(2)
  cams = rng.integers(0, 3, len(x))
  query, gallery = slice(0, 80), slice(80, None)

  def ignore(q):
    return np.flatnonzero((labels[gallery] == labels[query][q]) & (cams[gallery] == cams[query][q]))

  ref = _numpy_reference(x[query], labels[query], x[gallery], labels[gallery], ignore)
  ours = metrics.retrieval_metrics(x[query], labels[query], x[gallery], labels[gallery],
                                    query_cams=cams[query], gallery_cams=cams[gallery])
  _assert_close(ours, ref)


def test_chunking_does_not_change_results():
  rng, x, labels = _random_items(3)
  frames = rng.integers(0, 40, len(x))
  small = metrics.reid_metrics(x, labels, frames=frames, frame_gap=2, chunk_size=7)
  large = metrics.reid_metrics(x, labels, frames=frames, frame_gap=2, chunk_size=1024)
  assert small == pytest.approx(large, abs=1e-6)


# ---- The binary-search path for identities with many images ----


def _stats_by_path(monkeypatch, *args, **kwargs):
  """retrieval_stats with every chunk counted, then with every chunk binary-searched."""
  out = []
  for search_above in (10**9, -1):
    monkeypatch.setattr(metrics, "SEARCH_ABOVE", search_above)
    out.append(metrics.retrieval_stats(*args, **kwargs))
  return out


def _protocols(seed, n, num_ids):
  """(name, retrieval_stats args, kwargs, NumPy reference of it) for all three protocols."""
  rng, x, labels = _random_items(seed, n=n, num_ids=num_ids)
  frames, sequences = rng.integers(0, 40, n), rng.choice(["S1", "S2"], n)
  cams, split = rng.integers(0, 3, n), max(n // 4, 1)
  q, g = slice(0, split), slice(split, None)

  def near(i):
    return ((labels == labels[i]) & (sequences == sequences[i]) & (np.abs(frames - frames[i]) <= 3)
            | (np.arange(n) == i))

  def same_camera(i):
    return (labels[g] == labels[q][i]) & (cams[g] == cams[q][i])

  return [
      ("all", (x, labels), {}, _numpy_reference(x, labels, x, labels, lambda i: [i])),
      ("frame_gap", (x, labels),
       dict(query_frames=frames, query_sequences=sequences, frame_gap=3),
       _numpy_reference(x, labels, x, labels, lambda i: np.flatnonzero(near(i)))),
      ("cameras", (x[q], labels[q], x[g], labels[g]),
       dict(query_cams=cams[q], gallery_cams=cams[g]),
       _numpy_reference(x[q], labels[q], x[g], labels[g],
                        lambda i: np.flatnonzero(same_camera(i)))),
  ]


@pytest.mark.parametrize("n,num_ids,chunk_size,pairs", [
    (300, 6, 1024, 1 << 20),  # ~50 images per identity, many exact ties
    (300, 30, 7, 1 << 20),    # odd chunks: the last one shifted back
    (300, 6, 64, 300 * 5),    # 5-query search chunks inside each 64-query chunk
    (5, 2, 1024, 1 << 20),    # gallery smaller than any rank cut-off
])
def test_search_path_equals_counting_path_and_numpy_reference(monkeypatch, n, num_ids, chunk_size,
                                                              pairs):
  monkeypatch.setattr(metrics, "SEARCH_PAIRS", pairs)
  for name, args, kwargs, ref in _protocols(6, n, num_ids):
    counted, searched = _stats_by_path(monkeypatch, *args, **kwargs, chunk_size=chunk_size)
    for key in ("first_rank", "num_positives", "inp"):
      np.testing.assert_array_equal(counted[key], searched[key], err_msg=f"{name} {key}")
    # The same terms, summed in another order.
    np.testing.assert_allclose(counted["ap"], searched["ap"], atol=1e-6, rtol=0, err_msg=name)
    if ref["num_queries"]:  # still searching: _stats_by_path ends on that path
      _assert_close(metrics.retrieval_metrics(*args, **kwargs, chunk_size=chunk_size), ref)


def test_large_identities_take_the_search_path_and_match_numpy_reference(monkeypatch):
  # ~150 images per identity: more than SEARCH_ABOVE, so every chunk is binary-searched.
  rng, x, labels = _random_items(5, n=600, num_ids=4)
  frames, sequences = rng.integers(0, 60, len(x)), rng.choice(["S1", "S2"], len(x))
  calls = []
  search = metrics._search_chunk_stats
  monkeypatch.setattr(metrics, "_search_chunk_stats",
                      lambda *a, **k: calls.append(k["chunk"]) or search(*a, **k))

  ref = _numpy_reference(x, labels, x, labels, _frame_gap_ignore(labels, sequences, frames, 5))
  _assert_close(metrics.reid_metrics(x, labels, frames=frames, sequences=sequences,
                                      frame_gap=5), ref)
  assert calls and 0.05 < ref["mAP"] < 0.95


def test_path_metadata():
  meta = metrics.path_metadata(['MOT17-02-FRCNN_000009/000081.jpg', 'person1/000000.jpg',
                           'cam_a/img.png', 'top.jpg'])
  assert meta['identity'].tolist() == ['MOT17-02-FRCNN_000009', 'person1', 'cam_a', '']
  assert meta['sequence'].tolist() == ['MOT17-02-FRCNN', 'person1', 'cam_a', '']
  assert meta['frame'].tolist() == [81, 0, -1, -1] and meta['frame'].dtype == np.int64


# ---- Appearance-distance calibration against brute force ----


def _brute_force_distances(x, identities, sequences, frames, gap):
  """Every pair checked in plain Python loops."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  same, other = [], []
  for i in range(len(x)):
    for j in range(len(x)):
      if identities[i] == identities[j] and frames[j] - frames[i] == gap:
        same.append(1 - x[i] @ x[j])
    candidates = [1 - x[i] @ x[j] for j in range(len(x))
                  if sequences[j] == sequences[i] and identities[j] != identities[i]
                  and abs(frames[j] - frames[i]) <= gap]
    if candidates:
      other.append(min(candidates))
  return np.array(same), np.array(other)


@pytest.mark.parametrize('gap', [1, 3])
def test_appearance_distance_percentiles_match_brute_force(gap):
  rng = np.random.default_rng(gap)
  rows = []
  for seq in ('S1', 'S2'):
    for person in range(4):
      # Tracks with holes (missing frames), identity numbers reused across sequences.
      for frame in sorted(rng.choice(np.arange(1, 15), size=9, replace=False)):
        rows.append((f'{seq}_{person:06d}', seq, int(frame)))
  identities, sequences, frames = (np.array(c) for c in zip(*rows, strict=True))
  centres = rng.standard_normal((8, 6))
  x = centres[np.unique(identities, return_inverse=True)[1]] + 0.5 * rng.standard_normal(
      (len(rows), 6))

  same, other = metrics.appearance_distances(x, identities, sequences, frames, gap)
  ref_same, ref_other = _brute_force_distances(x, identities, sequences, frames, gap)
  np.testing.assert_allclose(np.sort(same), np.sort(ref_same), atol=1e-6)
  np.testing.assert_allclose(np.sort(other), np.sort(ref_other), atol=1e-6)
  assert len(ref_same) > 10 and len(ref_other) == len(rows)

  result = metrics.appearance_distance_percentiles(x, identities, sequences, frames, gap)
  for kind, ref in (('same_track', ref_same), ('nearest_other', ref_other)):
    assert result[kind]['count'] == len(ref)
    for q in metrics.CALIBRATION_PERCENTILES:
      assert result[kind][f'p{q}'] == pytest.approx(np.percentile(ref, q), abs=1e-6)
  # The gate's balanced error is the smallest over every threshold a brute force tries.
  def balanced_error(t):
    return np.mean(ref_same > t) + np.mean(ref_other <= t)
  grid = np.concatenate([ref_same, ref_other, [-1.0, 3.0]])
  assert balanced_error(result['gate']) == pytest.approx(min(map(balanced_error, grid)), abs=1e-9)
  assert result['same_track_above_gate'] == pytest.approx(np.mean(ref_same > result['gate']))
  assert result['nearest_other_at_or_below_gate'] == pytest.approx(
      np.mean(ref_other <= result['gate']))


def test_separating_gate_hand_computed():
  # Same-track 0.1, 0.2, 0.3; nearest other 0.5, 0.6: any gate in [0.3, 0.5) separates; the
  # midpoint 0.4 is chosen. With a same-track 0.55 among 3 and a nearest other 0.5 among 4,
  # letting 0.5 through (error 1/4) beats missing 0.55 (error 1/3): the gate is (0.55 + 0.6) / 2.
  assert metrics.separating_gate([0.1, 0.2, 0.3], [0.5, 0.6]) == pytest.approx(0.4)
  assert metrics.separating_gate([0.1, 0.2, 0.55], [0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.575)
  with pytest.raises(ValueError, match='no crop pairs'):
    metrics.appearance_distance_percentiles(np.eye(2), ['a', 'b'], ['s', 's'], [1, 1])
