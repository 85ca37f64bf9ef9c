"""Benchmark evaluate.reid_metrics against a NumPy port of MMDet's ReIDMetrics loop.

  python benchmarks/metrics.py                  # N = 5000 and 20000, D = 128, vs the NumPy loop
  python benchmarks/metrics.py --n=100000       # does 100k fit? ours only, one run, peak RSS
  python benchmarks/metrics.py --n=5000 --images_per_identity=20,500   # large identities

Embeddings are random clusters (~N/20 identities by default, all-vs-all). Prints a markdown table.
"""

import datetime
import os
import resource
import statistics
import sys
import time
import tracemalloc

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("n", ["5000", "20000"], "Numbers of embeddings to evaluate.")
flags.DEFINE_integer("dim", 128, "Embedding dimension.")
flags.DEFINE_integer("runs", 5, "Timed runs of ours after one warm-up (median reported).")
flags.DEFINE_integer("baseline_runs", 5,
                     "Timed runs of the NumPy baseline (median reported); 0 skips it.")
flags.DEFINE_integer("baseline_queries", 2000,
                     "Above this N the baseline times this many queries and extrapolates.")
flags.DEFINE_integer("baseline_max_n", 20000, "Skip the baseline above this N (N² memory).")
flags.DEFINE_list("images_per_identity", ["20"],
                  "Mean images per identity (N / this identities); one row per value.")
flags.DEFINE_integer("search_above", None,
                     "Override evaluate.SEARCH_ABOVE (e.g. 1000000000: counting path only).")


# ---- Data and the reference loop ----


def make_embeddings(n: int, dim: int, seed: int = 0,
                    images_per_identity: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Random clustered embeddings with about n / images_per_identity identities."""
  rng = np.random.default_rng(seed)
  num_ids = max(n // images_per_identity, 1)
  labels = rng.integers(0, num_ids, n)
  centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
  return centres[labels] + 1.2 * rng.normal(size=(n, dim)).astype(np.float32), labels


def mmdet_loop(features: np.ndarray, pids: np.ndarray, num_queries: int) -> dict[str, float]:
  """MMDet 3.x ReIDMetrics.compute_metrics in NumPy, for the first `num_queries` rows."""
  sq = np.square(features).sum(axis=1)
  distmat = sq[:num_queries, None] + sq[None, :] - 2.0 * features[:num_queries] @ features.T
  indices = np.argsort(distmat, axis=1)
  matches = (pids[indices] == pids[:num_queries, np.newaxis]).astype(np.int32)
  all_cmc, all_ap = [], []
  for q_idx in range(num_queries):
    raw_cmc = matches[q_idx][1:]  # MMDet drops the first-ranked item as "self"
    if not np.any(raw_cmc):
      continue
    cmc = raw_cmc.cumsum()
    cmc[cmc > 1] = 1
    all_cmc.append(cmc[:20])
    num_rel = raw_cmc.sum()
    tmp_cmc = raw_cmc.cumsum()
    tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
    tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
    all_ap.append(tmp_cmc.sum() / num_rel)
  all_cmc = np.asarray(all_cmc).sum(0) / len(all_ap)
  return {"mAP": float(np.mean(all_ap)), **{f"R{r}": float(all_cmc[r - 1]) for r in (1, 5, 10, 20)}}


# ---- Measurements ----


def time_ours(x: np.ndarray, labels: np.ndarray, runs: int) -> tuple[float, float, dict]:
  """(compile + first run seconds, median seconds, metrics)."""
  start = time.perf_counter()
  metrics = evaluate.reid_metrics(x, labels)
  first = time.perf_counter() - start
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    evaluate.reid_metrics(x, labels)
    times.append(time.perf_counter() - start)
  return first, statistics.median(times) if times else first, metrics


def time_baseline(x: np.ndarray, labels: np.ndarray, runs: int, num_queries: int):
  """(median seconds extrapolated to all queries, tracemalloc peak bytes, metrics)."""
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    metrics = mmdet_loop(x, labels, num_queries)
    times.append((time.perf_counter() - start) * len(x) / num_queries)
  tracemalloc.start()  # separate pass: tracing slows the Python loop
  mmdet_loop(x, labels, num_queries)
  peak = tracemalloc.get_traced_memory()[1] * len(x) / num_queries
  tracemalloc.stop()
  return statistics.median(times), peak, metrics


def peak_rss_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main(argv):
  del argv
  if FLAGS.search_above is not None:
    evaluate.SEARCH_ABOVE = FLAGS.search_above
  rows = []
  cases = [(int(n), int(k)) for n in FLAGS.n for k in FLAGS.images_per_identity]
  for n, per_id in sorted(cases):
    x, labels = make_embeddings(n, FLAGS.dim, images_per_identity=per_id)
    runs = FLAGS.runs if n <= FLAGS.baseline_max_n else 0  # the 100k check is a single run
    run_baseline = runs > 0 and FLAGS.baseline_runs > 0
    first, ours, metrics = time_ours(x, labels, runs)
    rss = peak_rss_gib()
    largest = np.bincount(labels).max()
    row = [f"{n}", f"{FLAGS.dim}", f"{len(np.unique(labels))} (largest {largest})",
           f"{first:.2f}", f"{ours:.2f}", f"{rss:.2f}", f"{metrics['mAP']:.4f}"]
    if run_baseline:
      num_queries = min(n, FLAGS.baseline_queries)
      base, peak, base_metrics = time_baseline(x, labels, FLAGS.baseline_runs, num_queries)
      note = "" if num_queries == n else f" (est. from {num_queries} queries)"
      diff = "" if num_queries < n else f"; ΔmAP {abs(base_metrics['mAP'] - metrics['mAP']):.1e}"
      row += [f"{base:.2f}{note}", f"{peak / 2**30:.2f}{note}", f"{base / ours:.1f}×{diff}"]
    else:
      row += ["not run", "not run", "-"]
    rows.append(row)
    print(f"done n={n}, {per_id} images per identity", flush=True)

  print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; load average at end "
        f"{os.getloadavg()[0]:.1f}; {datetime.date.today().isoformat()}")
  print(f"Command: python benchmarks/metrics.py {' '.join(sys.argv[1:])}".rstrip())
  print(f"Ours: median of {FLAGS.runs} runs after a warm-up (single run above N = "
        f"{FLAGS.baseline_max_n}), binary search above {evaluate.SEARCH_ABOVE} images per "
        f"identity; baseline: median of {FLAGS.baseline_runs} runs.\n")
  print("| N | D | ids | ours first call (s) | ours median (s) | ours peak RSS (GiB) | mAP | "
        "NumPy loop (s) | NumPy peak (GiB, tracemalloc) | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  app.run(main)
