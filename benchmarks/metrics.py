"""Benchmark metrics.reid_metrics against a NumPy port of MMDet's ReIDMetrics loop.

  python benchmarks/metrics.py                  # N = 5000 and 20000, D = 128, vs the NumPy loop
  python benchmarks/metrics.py --n=100000       # does 100k fit? ours only, one run, peak RSS
  python benchmarks/metrics.py --n=5000 --images_per_identity=20,500   # large identities
  python benchmarks/metrics.py --n=20000,100000 --baseline_runs=0 --single_run_above=1000000

Embeddings are random clusters (~N/20 identities by default, all-vs-all). Prints a markdown table.
Ours runs on JAX's default device (the GPU where there is one); the baseline is NumPy on the CPU.
"""

import datetime
import json
import os
import resource
import statistics
import sys
import time
import tracemalloc
from typing import Any

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jax  # noqa: E402

import metrics as metrics_lib  # noqa: E402  (the project's metrics.py, not this file)
from benchmarks import machine  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script: benchmarks/gpu.py imports us)."""
  flags.DEFINE_list("n", ["5000", "20000"], "Numbers of embeddings to evaluate.")
  flags.DEFINE_integer("dim", 128, "Embedding dimension.")
  flags.DEFINE_integer("runs", 5, "Timed runs of ours after one warm-up (median reported).")
  flags.DEFINE_integer("single_run_above", 20000,
                       "Above this N ours runs once (first call, compile included).")
  flags.DEFINE_integer("baseline_runs", 5,
                       "Timed runs of the NumPy baseline (median reported); 0 skips it.")
  flags.DEFINE_integer("baseline_queries", 2000,
                       "Above this N the baseline times this many queries and extrapolates.")
  flags.DEFINE_integer("baseline_max_n", 20000, "Skip the baseline above this N (N² memory).")
  flags.DEFINE_list("images_per_identity", ["20"],
                    "Mean images per identity (N / this identities); one row per value.")
  flags.DEFINE_integer("search_above", None,
                       "Override metrics.SEARCH_ABOVE (e.g. 1000000000: counting path only).")
  flags.DEFINE_string("json_out", None, "Also write the rows as JSON to this file (after each N).")


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
  metrics = metrics_lib.reid_metrics(x, labels)
  first = time.perf_counter() - start
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    metrics_lib.reid_metrics(x, labels)
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


def measure(n: int, dim: int, images_per_identity: int, runs: int, baseline_runs: int,
            baseline_queries: int) -> dict[str, Any]:
  """Ours (and the NumPy loop unless baseline_runs is 0) on one random set; a result row."""
  x, labels = make_embeddings(n, dim, images_per_identity=images_per_identity)
  first, ours, metrics = time_ours(x, labels, runs)
  row = {"n": n, "dim": dim, "ids": int(len(np.unique(labels))),
         "largest_id": int(np.bincount(labels).max()), "first_s": first, "median_s": ours,
         "runs": runs, "peak_rss_gib": peak_rss_gib(),
         "peak_device_bytes": machine.device_peak_memory_bytes(), "mAP": metrics["mAP"],
         "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})"}
  if baseline_runs > 0:
    num_queries = min(n, baseline_queries)
    base, peak, base_metrics = time_baseline(x, labels, baseline_runs, num_queries)
    row.update(baseline_s=base, baseline_peak_bytes=peak, baseline_queries=num_queries,
               delta_map=abs(base_metrics["mAP"] - metrics["mAP"]) if num_queries == n else None)
  return row


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown table of result rows."""
  lines = ["| N | D | ids | ours first call (s) | ours median (s) | ours peak RSS (GiB) | "
           "device peak (GiB) | mAP | NumPy loop (s) | NumPy peak (GiB, tracemalloc) | speed-up |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    device = r.get("peak_device_bytes")
    cells = [f"{r['n']}", f"{r['dim']}", f"{r['ids']} (largest {r['largest_id']})",
             f"{r['first_s']:.2f}", f"{r['median_s']:.2f}" + ("" if r["runs"] else " (one run)"),
             f"{r['peak_rss_gib']:.2f}", "n/a" if device is None else f"{device / 2**30:.2f}",
             f"{r['mAP']:.4f}"]
    if "baseline_s" in r:
      note = "" if r["baseline_queries"] == r["n"] else \
          f" (est. from {r['baseline_queries']} queries)"
      diff = "" if r["delta_map"] is None else f"; ΔmAP {r['delta_map']:.1e}"
      cells += [f"{r['baseline_s']:.2f}{note}", f"{r['baseline_peak_bytes'] / 2**30:.2f}{note}",
                f"{r['baseline_s'] / r['median_s']:.1f}×{diff}"]
    else:
      cells += ["not run", "not run", "-"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def time_in_subprocess(ns: list[int], *, dim: int = 128, runs: int = 5,
                       single_run_above: int = 20000, timeout: float | None = None,
                       env: dict[str, str] | None = None) -> list[dict[str, Any]]:
  """Ours only (no NumPy baseline) at each N, in a fresh process; its rows."""
  args = [f"--n={','.join(str(n) for n in ns)}", f"--dim={dim}", f"--runs={runs}",
          f"--single_run_above={single_run_above}", "--baseline_runs=0"]
  return machine.run_json("metrics", args, timeout=timeout, env=env)


def main(argv):
  del argv
  if FLAGS.search_above is not None:
    metrics_lib.SEARCH_ABOVE = FLAGS.search_above
  rows = []
  cases = [(int(n), int(k)) for n in FLAGS.n for k in FLAGS.images_per_identity]
  for n, per_id in sorted(cases):
    runs = FLAGS.runs if n <= FLAGS.single_run_above else 0
    baseline_runs = FLAGS.baseline_runs if runs and n <= FLAGS.baseline_max_n else 0
    rows.append(measure(n, FLAGS.dim, per_id, runs, baseline_runs, FLAGS.baseline_queries))
    if FLAGS.json_out:  # after each N: a long run stopped part-way keeps what it measured
      with open(FLAGS.json_out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"done n={n}, {per_id} images per identity", flush=True)

  print(f"\nDevice: {rows[0]['device'] if rows else '-'}; CPU: {machine.cpu_model()}, "
        f"{os.cpu_count()} cores; load average at end {os.getloadavg()[0]:.1f}; "
        f"{datetime.date.today().isoformat()}")
  print(f"Command: python benchmarks/metrics.py {' '.join(sys.argv[1:])}".rstrip())
  print(f"Ours: median of {FLAGS.runs} runs after a warm-up (single run above N = "
        f"{FLAGS.single_run_above}), binary search above {metrics_lib.SEARCH_ABOVE} images per "
        f"identity; baseline: median of {FLAGS.baseline_runs} runs.\n")
  print(table(rows))


if __name__ == "__main__":
  define_flags()
  app.run(main)
