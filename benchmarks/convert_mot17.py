r"""Benchmarks convert_mot17.py: crops written per second with 1 and 2 worker processes.

  python benchmarks/convert_mot17.py --data_dir=data/bench

Renders a MOT17-sized synthetic dataset once (7 sequences x 500 frames at 1920x1080, about 25
people per frame) with synthetic_mot and caches it under --data_dir (one folder per setting). Each
timed run converts it end to end (parse and validate, write crops, rename into place) into a fresh
output directory; the median of --repeats runs is reported as a markdown table row per worker count.
"""

import datetime
import os
import shutil
import statistics
import sys
import time

from absl import app, flags, logging

# The script's own folder comes first on sys.path and holds a file with the module's name.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import convert_mot17  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script)."""
  flags.DEFINE_string("data_dir", os.path.join(ROOT, "data", "bench"),
                      "Cache for the rendered dataset and scratch space for the conversions.")
  flags.DEFINE_integer("sequences", 7, "Synthetic sequences (MOT17 train: 7).")
  flags.DEFINE_integer("frames", 500, "Frames per sequence (MOT17 train: 600 on average).")
  flags.DEFINE_integer("people", 40, "Identities per sequence (about 60% in view at once).")
  flags.DEFINE_integer("frame_width", 1920, "Frame width (MOT17: 1920 for 6 of 7 sequences).")
  flags.DEFINE_integer("frame_height", 1080, "Frame height.")
  flags.DEFINE_list("workers", ["1", "2"], "Worker counts to measure.")
  flags.DEFINE_integer("repeats", 3, "Timed runs per worker count; the median is reported.")


def cached_dataset(data_dir: str, sequences: int, frames: int, people: int, width: int,
                   height: int) -> str:
  """Returns a rendered dataset for these settings, rendering it on first use."""
  path = os.path.join(data_dir, f"synth_s{sequences}_f{frames}_p{people}_{width}x{height}")
  if os.path.isdir(os.path.join(path, "train")):
    return path
  import synthetic_mot  # Only needed on a cache miss.

  logging.info("rendering %s (once; cached for later runs)", path)
  start = time.time()
  synthetic_mot.render_dataset(path, seed=0, num_sequences=sequences, num_frames=frames,
                               num_people=people, width=width, height=height)
  logging.info("rendered in %.0f s", time.time() - start)
  return path


def time_conversion(dataset: str, num_workers: int) -> tuple[int, float]:
  """Converts into a fresh directory; returns (crops written, wall seconds)."""
  out = dataset + "-reid-bench"
  shutil.rmtree(out, ignore_errors=True)
  start = time.perf_counter()
  summary = convert_mot17.convert(dataset, out, num_workers=num_workers)
  seconds = time.perf_counter() - start
  shutil.rmtree(out)
  return summary["train_images"] + summary["val_images"], seconds




def main(argv: list[str]) -> None:
  """Renders (once), times the conversions and prints the table."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  dataset = cached_dataset(FLAGS.data_dir, FLAGS.sequences, FLAGS.frames, FLAGS.people,
                           FLAGS.frame_width, FLAGS.frame_height)
  command = "python " + " ".join(sys.argv)
  date = datetime.date.today().isoformat()
  rows = []
  for workers in (int(w) for w in FLAGS.workers):
    runs = [time_conversion(dataset, workers) for _ in range(FLAGS.repeats)]
    crops = runs[0][0]
    rate = statistics.median(crops / seconds for _, seconds in runs)
    logging.info("%d workers: %s s", workers, ", ".join(f"{s:.1f}" for _, s in runs))
    rows.append(f"| {date} | {cpu_model()} | {os.cpu_count()} | `{command}` | "
                f"{FLAGS.sequences}x{FLAGS.frames} frames {FLAGS.frame_width}x{FLAGS.frame_height} "
                f"| {workers} | {crops} | {rate:.0f} |")
  print(f"| date | CPU | cores | command | dataset | workers | crops | "
        f"crops/s (median of {FLAGS.repeats}) |")
  print("|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  define_flags()
  app.run(main)
