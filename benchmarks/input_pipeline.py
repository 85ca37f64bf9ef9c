"""Images/s of the P×K training stream: tf.data pipeline vs a plain PIL + NumPy loader.

Both do the same work on the same indices: read, decode, resize to 256x128, flip, pad 10 + random
crop, random erasing, stack into a batch. tf.data is pinned to 1 and 2 threads; the PIL loader runs
in one thread. Throughput is normalised per core (images/s divided by the threads allowed) and
per CPU-second actually used by the process (which also counts TF's helper threads).

  python benchmarks/input_pipeline.py --data_root=data/MOT17/reid
  python benchmarks/input_pipeline.py --make_data          # synthetic MOT17 -> converter, cached
"""

import datetime
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import input_pipeline  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_root", None, "Dataset with imgs/ and meta/<list>.")
flags.DEFINE_string("list_name", "train_80.txt", "Training list under meta/.")
flags.DEFINE_bool("make_data", False, "Render a default synthetic MOT17 set and convert it "
                  "(cached under --cache_dir) instead of --data_root.")
flags.DEFINE_string("cache_dir", os.path.join(ROOT, "data", "bench_input_pipeline"),
                    "Where --make_data keeps its dataset.")
flags.DEFINE_integer("p", 16, "Identities per batch.")
flags.DEFINE_integer("k", 4, "Images per identity.")
flags.DEFINE_integer("steps", 20, "Batches per timed run.")
flags.DEFINE_integer("runs", 5, "Timed runs (median reported).")
flags.DEFINE_integer("warmup", 5, "Untimed batches first.")
flags.DEFINE_list("threads", ["1", "2"], "tf.data thread counts to measure.")
flags.DEFINE_integer("seed", 0, "Sampling/augmentation seed.")

IMAGE_SIZE = (256, 128)
AUGMENT = input_pipeline.Augment(flip=True, pad=10, erasing_prob=0.5)

# ---- Data ----


def _make_data(cache_dir: str) -> str:
  """Synthetic MOT17 (default size) -> converter, once; returns the ReID dataset root."""
  reid_root = os.path.join(cache_dir, "reid")
  if os.path.exists(os.path.join(reid_root, "meta", FLAGS.list_name)):
    return reid_root
  for script in ("synthetic_mot.py", "convert_mot17.py"):
    if not os.path.exists(os.path.join(ROOT, script)):
      raise app.UsageError(f"--make_data needs {script} in {ROOT}; pass --data_root instead")
  mot_root = os.path.join(cache_dir, "mot")
  run = lambda *args: subprocess.run([sys.executable, *args], check=True, cwd=ROOT)
  if not os.path.isdir(os.path.join(mot_root, "train")):
    run("synthetic_mot.py", f"--output_dir={mot_root}", "--seed=0", "--overwrite")
  run("convert_mot17.py", f"--input_dir={mot_root}", f"--output_dir={reid_root}", "--overwrite")
  return reid_root


# ---- The plain loader being compared against ----


def _pil_batch(data: input_pipeline.FileList, rows: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
  """Same work as the tf.data stream, image by image in Python."""
  height, width = IMAGE_SIZE
  pad = AUGMENT.pad
  images = []
  for row in rows:
    with Image.open(os.path.join(data.image_root, data.paths[row])) as image:
      image = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
    if rng.random() < 0.5:
      image = image[:, ::-1]
    # Crop of the zero-padded image, written straight into a zero canvas (no padded copy).
    dy, dx = rng.integers(-pad, pad + 1, size=2)
    shifted = np.zeros_like(image)
    shifted[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)] = (
        image[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)])
    image = shifted
    if rng.random() < AUGMENT.erasing_prob:
      for _ in range(100):  # Zhong et al.'s retry loop.
        area = rng.uniform(*AUGMENT.erasing_area) * height * width
        aspect = rng.uniform(*AUGMENT.erasing_aspect)
        h, w = round((area * aspect) ** 0.5), round((area / aspect) ** 0.5)
        if h < height and w < width:
          y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
          image[y:y + h, x:x + w] = (124, 116, 104)
          break
    images.append(image)
  return np.stack(images)


# ---- Timing ----


def _time_runs(next_batch, batch_size: int) -> tuple[float, float]:
  """Median images/s and images per process CPU-second over FLAGS.runs runs."""
  for _ in range(FLAGS.warmup):
    next_batch()
  rates, cpu_rates = [], []
  for _ in range(FLAGS.runs):
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.steps):
      next_batch()
    images = FLAGS.steps * batch_size
    rates.append(images / (time.perf_counter() - wall))
    cpu_rates.append(images / (time.process_time() - cpu))
  return float(np.median(rates)), float(np.median(cpu_rates))




def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.make_data:
    data_root = _make_data(FLAGS.cache_dir)
  elif FLAGS.data_root:
    data_root = FLAGS.data_root
  else:
    raise app.UsageError("pass --data_root=<dir with imgs/ and meta/> or --make_data")
  try:
    data = input_pipeline.read_filelist(os.path.join(data_root, "meta", FLAGS.list_name),
                                        os.path.join(data_root, "imgs"))
  except ValueError as e:
    sys.exit(f"error: {e}")
  ids, num_ids = input_pipeline.class_ids(data.labels)
  batch_size = FLAGS.p * FLAGS.k
  sizes = [Image.open(os.path.join(data.image_root, p)).size for p in data.paths[:200]]
  mean_w, mean_h = np.mean(sizes, axis=0)

  results = []  # (loader, cores, images/s, images/s per core, images per CPU-s)
  for threads in map(int, FLAGS.threads):
    stream = input_pipeline.train_batches(
        data, p=FLAGS.p, k=FLAGS.k, image_size=IMAGE_SIZE, augment=AUGMENT, seed=FLAGS.seed,
        threads=threads)
    rate, cpu_rate = _time_runs(lambda s=stream: next(s), batch_size)
    results.append((f"tf.data ({threads} thread{'s' * (threads > 1)})", threads, rate,
                    rate / threads, cpu_rate))
    del stream

  rng = np.random.default_rng(FLAGS.seed)
  step = iter(range(10**9))
  pil_next = lambda: _pil_batch(data, input_pipeline.pk_indices(
      ids, p=FLAGS.p, k=FLAGS.k, seed=FLAGS.seed, step=next(step)), rng)
  rate, cpu_rate = _time_runs(pil_next, batch_size)
  pil_per_core = rate
  results.append(("PIL + NumPy (1 thread)", 1, rate, rate, cpu_rate))

  command = " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
  print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores; "
        f"date {datetime.date.today().isoformat()}; command `{command}`")
  print(f"Data: {data_root} ({data.num_images} images, {num_ids} identities, mean crop "
        f"{mean_w:.0f}x{mean_h:.0f} WxH); P={FLAGS.p} K={FLAGS.k}, "
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, flip + pad {AUGMENT.pad} crop + erasing "
        f"p={AUGMENT.erasing_prob}; median of "
        f"{FLAGS.runs} runs x {FLAGS.steps} batches after {FLAGS.warmup} warm-up batches.\n")
  print("| loader | cores | images/s | images/s per core | images per CPU-s | "
        "per core vs PIL |")
  print("|---|---|---|---|---|---|")
  for name, cores, rate, per_core, cpu_rate in results:
    print(f"| {name} | {cores} | {rate:.0f} | {per_core:.0f} | {cpu_rate:.0f} | "
          f"{per_core / pil_per_core:.2f}x |")


if __name__ == "__main__":
  app.run(main)
