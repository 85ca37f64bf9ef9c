"""Images/s of the P×K training stream: tf.data pipeline vs a plain PIL + NumPy loader.

Both do the same work on the same indices: read, decode, resize to 256x128, flip, pad 10 + random
crop, random erasing, stack into a batch. Each measurement runs in its own process pinned to the
first n CPUs (sched_setaffinity): tf.data with the threading train.py uses (TF's defaults) on 1 and
2 cores, the PIL loader (one thread) on 1 core. Throughput is normalised per core and per CPU-second
the process actually used. (Pinning the process, not a tf.data private thread pool of n threads: on
a VM the private pool's cross-core hand-offs cost ~60 us per image and measure the VM, not tf.data.)

  python benchmarks/input_pipeline.py --data_root=data/MOT17/reid
  python benchmarks/input_pipeline.py --make_data          # synthetic MOT17 -> converter, cached
"""

import datetime
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
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
flags.DEFINE_list("cores", ["1", "2"], "Core counts to pin the tf.data process to.")
flags.DEFINE_integer("seed", 0, "Sampling/augmentation seed.")
flags.DEFINE_bool("breakdown", False, "Also time each stage (read, decode, resize) of both "
                  "loaders on one core, to show where the time goes.")
flags.DEFINE_enum("worker", None, ["tfdata", "pil", "breakdown"],
                  "Internal: measure one loader in this (pinned) process and print JSON.")

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




# ---- Where the time goes ----


def _tf_stage_cost(paths: list[str], load) -> float:
  """Median microseconds per image of `load` over `paths` in tf.data, batched by 64."""
  ds = tf.data.Dataset.from_tensor_slices(paths).map(load).batch(64)
  for _ in ds.take(2):
    pass
  times = []
  for _ in range(FLAGS.runs):
    start = time.perf_counter()
    for _ in ds:
      pass
    times.append(time.perf_counter() - start)
  return 1e6 * float(np.median(times)) / len(paths)


def _python_stage_cost(paths: list[str], load) -> float:
  """Median microseconds per image of a Python `load(path)`."""
  times = []
  for _ in range(FLAGS.runs):
    start = time.perf_counter()
    for path in paths:
      load(path)
    times.append(time.perf_counter() - start)
  return 1e6 * float(np.median(times)) / len(paths)


def _pil_decode(path: str) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


def _pil_resize(path: str) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB").resize(IMAGE_SIZE[::-1], Image.BILINEAR))


def stage_breakdown(data: input_pipeline.FileList, num_images: int = 2048) -> list[tuple]:
  """(stage, tf.data us/image, PIL us/image), each stage including the ones before it."""
  paths = [os.path.join(data.image_root, p) for p in data.paths[:num_images]]

  def read(path):
    return tf.strings.length(tf.io.read_file(path))

  def decode(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3, dct_method="INTEGER_ACCURATE")
    return tf.reduce_max(image)  # uses every pixel: TF may only parse the header for a shape

  def load(path):
    return input_pipeline._load_image(path, IMAGE_SIZE)  # pylint: disable=protected-access

  def read_bytes(path):
    with open(path, "rb") as f:
      return f.read()

  return [("read the file", _tf_stage_cost(paths, read), _python_stage_cost(paths, read_bytes)),
          ("+ decode (RGB)", _tf_stage_cost(paths, decode), _python_stage_cost(paths, _pil_decode)),
          ("+ resize to 256x128", _tf_stage_cost(paths, load),
           _python_stage_cost(paths, _pil_resize))]


def _measure(worker: str, data: input_pipeline.FileList) -> dict:
  """Runs one measurement in this process (already pinned by its parent)."""
  batch_size = FLAGS.p * FLAGS.k
  if worker == "tfdata":
    stream = input_pipeline.train_batches(data, p=FLAGS.p, k=FLAGS.k, image_size=IMAGE_SIZE,
                                          augment=AUGMENT, seed=FLAGS.seed)
    rate, cpu_rate = _time_runs(lambda: next(stream), batch_size)
    return {"rate": rate, "cpu_rate": cpu_rate}
  if worker == "pil":
    ids, _ = input_pipeline.class_ids(data.labels)
    rng = np.random.default_rng(FLAGS.seed)
    step = iter(range(10**9))
    rate, cpu_rate = _time_runs(lambda: _pil_batch(data, input_pipeline.pk_indices(
        ids, p=FLAGS.p, k=FLAGS.k, seed=FLAGS.seed, step=next(step)), rng), batch_size)
    return {"rate": rate, "cpu_rate": cpu_rate}
  return {"stages": stage_breakdown(data)}


def _pinned(worker: str, cores: int) -> dict:
  """_measure(worker) in a fresh process restricted to the first `cores` CPUs."""
  allowed = sorted(os.sched_getaffinity(0))
  if cores > len(allowed):
    raise app.UsageError(f"--cores={cores} but only {len(allowed)} CPUs are available")
  args = [a for a in sys.argv[1:] if not a.startswith(("--worker", "--breakdown", "--make_data"))]
  command = [sys.executable, os.path.abspath(__file__), f"--worker={worker}",
             f"--data_root={_data_root()}", *args]
  result = subprocess.run(command, capture_output=True, text=True, check=False,
                          preexec_fn=lambda: os.sched_setaffinity(0, allowed[:cores]))
  if result.returncode != 0:
    sys.exit(f"error: the {worker} measurement on {cores} core(s) failed:\n"
             f"{result.stderr[-2000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def _data_root() -> str:
  if FLAGS.make_data:
    return _make_data(FLAGS.cache_dir)
  if FLAGS.data_root:
    return FLAGS.data_root
  raise app.UsageError("pass --data_root=<dir with imgs/ and meta/> or --make_data")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  data_root = _data_root()
  try:
    data = input_pipeline.read_filelist(os.path.join(data_root, "meta", FLAGS.list_name),
                                        os.path.join(data_root, "imgs"))
  except ValueError as e:
    sys.exit(f"error: {e}")
  if FLAGS.worker:
    print(json.dumps(_measure(FLAGS.worker, data)))
    return
  _, num_ids = input_pipeline.class_ids(data.labels)
  sizes = [Image.open(os.path.join(data.image_root, p)).size for p in data.paths[:200]]
  mean_w, mean_h = np.mean(sizes, axis=0)

  results = []  # (loader, cores, images/s, images per CPU-s)
  for cores in map(int, FLAGS.cores):
    row = _pinned("tfdata", cores)
    results.append((f"tf.data ({cores} core{'s' * (cores > 1)})", cores, row["rate"],
                    row["cpu_rate"]))
  row = _pinned("pil", 1)
  results.append(("PIL + NumPy (1 core)", 1, row["rate"], row["cpu_rate"]))
  pil_per_core = row["rate"]

  command = " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
  print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.1f}; date {datetime.date.today().isoformat()}; "
        f"command `{command}`")
  print(f"Data: {data_root} ({data.num_images} images, {num_ids} identities, mean crop "
        f"{mean_w:.0f}x{mean_h:.0f} WxH); P={FLAGS.p} K={FLAGS.k}, "
        f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, flip + pad {AUGMENT.pad} crop + erasing "
        f"p={AUGMENT.erasing_prob}; median of "
        f"{FLAGS.runs} runs x {FLAGS.steps} batches after {FLAGS.warmup} warm-up batches.\n")
  print("| loader | cores | images/s | images/s per core | images per CPU-s | "
        "per core vs PIL |")
  print("|---|---|---|---|---|---|")
  for name, cores, rate, cpu_rate in results:
    print(f"| {name} | {cores} | {rate:.0f} | {rate / cores:.0f} | {cpu_rate:.0f} | "
          f"{rate / cores / pil_per_core:.2f}x |")
  if FLAGS.breakdown:
    full_tf, full_pil = 1e6 / results[0][2], 1e6 / pil_per_core
    print("\nMicroseconds per image on one core, each stage including the ones above it "
          "(the last row is the full stream above):\n")
    print("| stage | tf.data | PIL + NumPy |")
    print("|---|---|---|")
    for stage, tf_us, pil_us in _pinned("breakdown", 1)["stages"]:
      print(f"| {stage} | {tf_us:.0f} | {pil_us:.0f} |")
    print(f"| + P×K sampling, flip, pad-crop, erasing, batch | {full_tf:.0f} | {full_pil:.0f} |")


if __name__ == "__main__":
  app.run(main)
