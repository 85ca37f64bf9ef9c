"""tf.data input pipelines for ReID: P×K identity batches for training, ordered batches for eval.

Data format (the converter's output, or any dataset laid out the same way):

  <image_root>/<identity folder>/<frame>.jpg        e.g. imgs/MOT17-02-FRCNN_000009/000081.jpg
  <list file>: one `<path relative to image_root> <integer label>` per line

Images come out as uint8 NHWC RGB at the requested size (bilinear, aspect ratio not kept, no
antialiasing, like the reference's cv2 resize); normalisation happens on device
(`models.normalize_images`).
"""

import collections
import dataclasses
import math
import os
import posixpath
import re
from collections.abc import Iterator, Sequence

import jax
import numpy as np

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it; must precede the import.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
import tensorflow as tf

# tf.data only needs the CPU; a GPU-visible TF would grab accelerator memory that JAX needs.
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # TF already initialised its devices, or none exist.
  pass

# Random erasing fills with the ImageNet mean colour (models.IMAGENET_MEAN_RGB, rounded), i.e. ~0
# after the device-side normalisation.
_ERASE_FILL_RGB = (124, 116, 104)
_ERASE_ATTEMPTS = 10  # Zhong et al. retry up to 100 times; 10 all failing is ~1e-15 at defaults.
_MAX_LABEL = 2**31 - 1  # labels travel as int32.

# ---- File lists ----


@dataclasses.dataclass(frozen=True)
class FileList:
  """A parsed `path label` list; arrays are in file order."""
  source: str  # The list file path (for messages).
  image_root: str
  paths: tuple[str, ...]  # Relative to image_root, normalised ('a/./b.jpg' -> 'a/b.jpg').
  labels: np.ndarray  # int64 raw labels as written in the file.
  lines: np.ndarray  # 1-based line numbers (for messages).

  @property
  def num_images(self) -> int:
    return len(self.paths)


_INT_RE = re.compile(r"[+-]?[0-9]+")


def _parse_line(list_path: str, lineno: int, line: str) -> tuple[str, int]:
  """Splits `path label` on the last whitespace run and validates both halves."""
  parts = line.rsplit(None, 1)
  if len(parts) != 2:
    raise ValueError(f"{list_path}:{lineno}: expected '<path> <label>', got {line.strip()!r}")
  path, label_text = parts
  path = path.strip()
  if not _INT_RE.fullmatch(label_text):
    raise ValueError(f"{list_path}:{lineno}: label {label_text!r} is not an integer")
  label = int(label_text)
  if label < 0:
    raise ValueError(f"{list_path}:{lineno}: label {label} is negative")
  if label > _MAX_LABEL:
    raise ValueError(f"{list_path}:{lineno}: label {label} is larger than {_MAX_LABEL}")
  if path.startswith(("/", "\\")) or os.path.isabs(path):
    raise ValueError(f"{list_path}:{lineno}: path {path!r} is absolute; "
                     "paths must be relative to the image root")
  normalised = posixpath.normpath(path)
  if normalised == ".." or normalised.startswith("../"):
    raise ValueError(f"{list_path}:{lineno}: path {path!r} points outside the image root")
  return normalised, label


def _check_files_exist(list_path: str, image_root: str, paths: Sequence[str],
                       lines: np.ndarray) -> None:
  """Raises for the first listed file that is missing; one directory listing per folder."""
  names_by_dir: dict[str, set[str] | None] = {}
  for path, lineno in zip(paths, lines, strict=True):
    folder, name = posixpath.split(path)
    if folder not in names_by_dir:
      try:
        with os.scandir(os.path.join(image_root, folder)) as entries:
          names_by_dir[folder] = {e.name for e in entries if e.is_file()}
      except (FileNotFoundError, NotADirectoryError):
        names_by_dir[folder] = None
    names = names_by_dir[folder]
    if names is None or name not in names:
      raise ValueError(f"{list_path}:{lineno}: image not found: {os.path.join(image_root, path)}")


def read_filelist(list_path: str, image_root: str, *, check_files: bool = True) -> FileList:
  """Parses a `path label` list file; errors name `file:line`."""
  try:
    with open(list_path, encoding="utf-8") as f:
      text_lines = f.read().split("\n")
  except FileNotFoundError:
    raise ValueError(f"{list_path}: not found") from None
  except IsADirectoryError:
    raise ValueError(f"{list_path}: is a directory, expected a list file") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{list_path}: not UTF-8 text ({e.reason})") from None
  paths, labels, lines = [], [], []
  for lineno, line in enumerate(text_lines, start=1):
    if not line.strip():
      continue
    path, label = _parse_line(list_path, lineno, line.rstrip("\r"))
    paths.append(path)
    labels.append(label)
    lines.append(lineno)
  if not paths:
    raise ValueError(f"{list_path}: no images")
  lines_array = np.asarray(lines, np.int64)
  if check_files:
    _check_files_exist(list_path, image_root, paths, lines_array)
  return FileList(source=list_path, image_root=image_root, paths=tuple(paths),
                  labels=np.asarray(labels, np.int64), lines=lines_array)


def class_ids(labels: np.ndarray, num_classes: int | None = None, *,
              source: str = "") -> tuple[np.ndarray, int]:
  """Maps raw labels to contiguous int32 ids 0..K-1 (sorted raw-label order); returns (ids, K)."""
  unique, ids = np.unique(np.asarray(labels), return_inverse=True)
  found = len(unique)
  if num_classes and num_classes != found:
    where = f"{source}: " if source else ""
    raise ValueError(
        f"{where}num_classes is {num_classes} but the list has {found} distinct labels")
  return ids.astype(np.int32).reshape(-1), found


# ---- P×K sampling ----


def steps_per_epoch(num_identities: int, p: int) -> int:
  """Global steps per epoch: every identity once, P per step, last step topped up."""
  return math.ceil(num_identities / p)


def _group_rows(identity_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rows sorted by identity, plus each identity's start and count in that order."""
  ids = np.asarray(identity_ids).reshape(-1)
  order = np.argsort(ids, kind="stable")
  _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
  return order, starts, counts


def _pk_rows(groups: tuple[np.ndarray, np.ndarray, np.ndarray], p: int, k: int, seed: int,
             step: int) -> np.ndarray:
  """`pk_indices` on precomputed identity groups (see there)."""
  order, starts, counts = groups
  num_ids = len(starts)
  epoch, position = divmod(step, steps_per_epoch(num_ids, p))
  # Distinct tags (0, 1) keep the epoch stream and the per-step stream independent.
  visit_order = np.random.default_rng([seed, 0, epoch]).permutation(num_ids)
  # P identities from this step's place in the order; the epoch's last step is topped up from
  # the start of the same order (cyclically, when the list has fewer than P identities).
  chosen = np.resize(np.roll(visit_order, -position * p), p)
  rng = np.random.default_rng([seed, 1, step])
  rows = [order[starts[i] + rng.choice(counts[i], size=k, replace=bool(counts[i] < k))]
          for i in chosen]
  return np.concatenate(rows).astype(np.int64)


def pk_indices(identity_ids: np.ndarray, *, p: int, k: int, seed: int, step: int) -> np.ndarray:
  """Rows of global batch `step` of the infinite P×K stream, shape (p*k,), k rows per identity.

  Epoch e = steps [e*S, (e+1)*S) with S = ceil(num_identities / P). Each epoch visits the identities
  in a fresh order (a permutation seeded by (seed, e)), P per step, so every identity appears at
  least once per epoch; the last step is completed with the first identities of the same order, so
  every batch has P distinct identities when the list has at least P. With fewer (MMDet samples
  8 identities per GPU, so its global batch repeats them too), every step holds every identity
  once or more, the order repeated cyclically. Each identity slot contributes K images, drawn
  without replacement when it has >= K images and with replacement otherwise (seeded by
  (seed, step)).
  A pure function of (identity_ids, p, k, seed, step): resuming at a step replays the same batches.
  """
  return _pk_rows(_group_rows(identity_ids), p, k, seed, step)


# ---- Decoding and augmentation (tf, no Python per image) ----


@dataclasses.dataclass(frozen=True)
class Augment:
  """Training augmentations, applied in this order: jitter, flip, pad-crop, erasing."""
  flip: bool = True  # Horizontal flip with p=0.5.
  pad: int = 0  # Zero-pad by this many pixels on each side, then random crop back to HxW; 0 = off.
  erasing_prob: float = 0.0  # Random erasing (Zhong et al. / BoT) filled with the ImageNet mean.
  erasing_area: tuple[float, float] = (0.02, 0.4)  # Fraction of the image area.
  erasing_aspect: tuple[float, float] = (0.3, 3.33)  # Height / width, drawn uniformly.
  color_jitter: float = 0.0  # Brightness/contrast/saturation factors in [1-s, 1+s]; 0 = off.

  def __post_init__(self):
    area_low, area_high = self.erasing_area
    aspect_low, aspect_high = self.erasing_aspect
    if self.pad < 0 or self.color_jitter < 0:
      raise ValueError(f"augment: pad and color_jitter must be >= 0, got {self}")
    if not 0 <= self.erasing_prob <= 1:
      raise ValueError(f"augment: erasing_prob must be in [0, 1], got {self.erasing_prob}")
    if not (0 < area_low <= area_high <= 1 and 0 < aspect_low <= aspect_high):
      raise ValueError(f"augment: need 0 < erasing_area[0] <= erasing_area[1] <= 1 and "
                       f"0 < erasing_aspect[0] <= erasing_aspect[1], got {self}")


def _load_image(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  """Reads, decodes (JPEG/PNG/BMP/GIF, any channel count) and resizes one image to uint8 RGB."""
  data = tf.io.read_file(path)
  # decode_image would use libjpeg's fast (inexact) IDCT; the accurate one matches PIL and cv2.
  image = tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
  return tf.ensure_shape(resize_image(image, image_size), (*image_size, 3))


def resize_image(image: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
  """uint8 HxWxC -> image_size, bilinear with half-pixel centres and no antialiasing (cv2's)."""
  # Bilinear weights sum to 1, so adding 0.5 before resizing (on the smaller input, and the float
  # kernel is faster than the uint8 one) turns the final truncating cast into round-half-up.
  shifted = tf.cast(image, tf.float32) + 0.5
  resized = tf.raw_ops.ResizeBilinear(images=shifted[None], size=image_size,
                                      half_pixel_centers=True)[0]
  return tf.cast(resized, tf.uint8)


# Columns of the per-row uniform draws; fixed so that switching one augmentation on or off never
# changes the randomness of another.
_FLIP, _CROP_Y, _CROP_X, _ERASE_ON, _ERASE_TOP, _ERASE_LEFT = range(6)
_ERASE_AREA = 6
_ERASE_ASPECT = _ERASE_AREA + _ERASE_ATTEMPTS
_JITTER = _ERASE_ASPECT + _ERASE_ATTEMPTS  # Brightness, contrast, saturation.
_NUM_DRAWS = _JITTER + 3


def _erasing_boxes(u: tf.Tensor, augment: Augment, height: int, width: int) -> tf.Tensor:
  """[n, 4] (top, left, h, w) per row, h = w = 0 for no erasing (Zhong et al.'s recipe)."""
  area_low, area_high = augment.erasing_area
  aspect_low, aspect_high = augment.erasing_aspect
  area = (area_low + u[:, _ERASE_AREA:_ERASE_ASPECT] * (area_high - area_low)) * (height * width)
  aspect = aspect_low + u[:, _ERASE_ASPECT:_JITTER] * (aspect_high - aspect_low)  # h / w.
  h = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (h < height) & (w < width) & (h > 0) & (w > 0)
  # The first attempt that fits, as in the reference's retry loop.
  attempt = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
  apply = (u[:, _ERASE_ON] < augment.erasing_prob) & tf.reduce_any(fits, axis=1)
  h = tf.where(apply, tf.gather(h, attempt, batch_dims=1), 0)
  w = tf.where(apply, tf.gather(w, attempt, batch_dims=1), 0)
  top = tf.minimum(tf.cast(u[:, _ERASE_TOP] * tf.cast(height - h + 1, tf.float32), tf.int32),
                   height - h)
  left = tf.minimum(tf.cast(u[:, _ERASE_LEFT] * tf.cast(width - w + 1, tf.float32), tf.int32),
                    width - w)
  return tf.stack([top, left, h, w], axis=1)


def _augment_params(step: tf.Tensor, *, augment: Augment, seed: int, image_size: tuple[int, int],
                    global_batch: int, row_offset: int, local_batch: int) -> dict[str, tf.Tensor]:
  """Per-row augmentation parameters for this process's rows of global batch `step`.

  Row r of the global batch always gets row r of one stateless draw seeded by (seed, step), so
  parameters depend only on (seed, step, row), whichever process or resume point computes them.
  """
  draws = tf.random.stateless_uniform(
      [global_batch, _NUM_DRAWS], seed=tf.stack([tf.constant(seed, tf.int64), step]))
  u = draws[row_offset:row_offset + local_batch]
  pad = augment.pad
  low, high = max(0.0, 1.0 - augment.color_jitter), 1.0 + augment.color_jitter
  return {
      "flip": u[:, _FLIP] < 0.5,
      "shift": tf.minimum(tf.cast(u[:, _CROP_Y:_CROP_X + 1] * (2 * pad + 1), tf.int32), 2 * pad)
               - pad,
      "erase": _erasing_boxes(u, augment, *image_size),
      "jitter": low + u[:, _JITTER:_JITTER + 3] * (high - low),
  }


def _grayscale(x: tf.Tensor) -> tf.Tensor:
  return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def _color_jitter(image: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
  """Brightness, contrast, saturation (torchvision's definitions), in that order."""
  x = tf.clip_by_value(tf.cast(image, tf.float32) * factors[0], 0.0, 255.0)
  mean = tf.reduce_mean(_grayscale(x))
  x = tf.clip_by_value((x - mean) * factors[1] + mean, 0.0, 255.0)
  gray = _grayscale(x)
  x = tf.clip_by_value((x - gray) * factors[2] + gray, 0.0, 255.0)
  return tf.cast(x + 0.5, tf.uint8)


def _shift(image: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
  """Crop of the zero-padded image: out[y, x] = image[y + dy, x + dx], zero outside."""
  height, width = image.shape[0], image.shape[1]
  dy, dx = shift[0], shift[1]
  kept = image[tf.maximum(dy, 0):height + tf.minimum(dy, 0),
               tf.maximum(dx, 0):width + tf.minimum(dx, 0)]
  padded = tf.pad(kept, [[tf.maximum(-dy, 0), tf.maximum(dy, 0)],
                         [tf.maximum(-dx, 0), tf.maximum(dx, 0)], [0, 0]])
  return tf.ensure_shape(padded, image.shape)


def _erase(image: tf.Tensor, box: tf.Tensor) -> tf.Tensor:
  """Sets the (top, left, h, w) rectangle to the mean colour (slices + concat, no full mask)."""
  top, left, h, w = box[0], box[1], box[2], box[3]
  fill = tf.broadcast_to(tf.constant(_ERASE_FILL_RGB, tf.uint8), tf.stack([h, w, 3]))
  band = image[top:top + h]
  band = tf.concat([band[:, :left], fill, band[:, left + w:]], axis=1)
  return tf.ensure_shape(tf.concat([image[:top], band, image[top + h:]], axis=0), image.shape)


def _augment_image(image: tf.Tensor, params: dict[str, tf.Tensor], augment: Augment) -> tf.Tensor:
  """Applies the enabled augmentations in order: jitter, flip, pad-crop, erasing."""
  if augment.color_jitter > 0:
    image = _color_jitter(image, params["jitter"])
  if augment.flip:
    image = tf.cond(params["flip"], lambda: tf.reverse(image, axis=[1]), lambda: image)
  if augment.pad > 0:
    image = _shift(image, params["shift"])
  if augment.erasing_prob > 0:
    image = tf.cond(params["erase"][2] > 0, lambda: _erase(image, params["erase"]), lambda: image)
  return image


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


# ---- Training stream ----


def train_batches(data: FileList, *, p: int, k: int, image_size: tuple[int, int],
                  augment: Augment, seed: int, start_step: int = 0, process_index: int = 0,
                  process_count: int = 1,
                  num_classes: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Infinite stream of this process's share of global P×K batches start_step, start_step+1, ...

  Yields {'image': uint8 [P/process_count*K, H, W, 3] RGB, 'label': int32 contiguous class ids}.
  Process i gets identities [i*P/pc, (i+1)*P/pc) of each global batch (see `pk_indices` for how
  batches are drawn). Indices and augmentations depend only on (seed, step, row in the global
  batch), so a run resumed at start_step=s sees exactly the pixels an uninterrupted run sees.
  """
  ids, _ = class_ids(data.labels, num_classes, source=data.source)
  groups = _group_rows(ids)
  local_batch = p // process_count * k
  row_offset = process_index * local_batch
  size = tuple(image_size)

  def local_rows(step: np.ndarray) -> np.ndarray:
    return _pk_rows(groups, p, k, seed, int(step))[row_offset:row_offset + local_batch]

  def plan_step(step):
    """Rows and augmentation parameters of one batch: Python once per batch, not per image."""
    rows = tf.numpy_function(local_rows, [step], tf.int64, stateful=False)
    params = _augment_params(step, augment=augment, seed=seed, image_size=size,
                             global_batch=p * k, row_offset=row_offset, local_batch=local_batch)
    return tf.ensure_shape(rows, [local_batch]), params

  full_paths = tf.constant([os.path.join(data.image_root, path) for path in data.paths])
  labels = tf.constant(ids, tf.int32)

  def load(row, params):
    image = _augment_image(_load_image(tf.gather(full_paths, row), size), params, augment)
    return {"image": image, "label": tf.gather(labels, row)}

  ds = tf.data.Dataset.counter(start_step, dtype=tf.int64)
  ds = ds.map(plan_step).prefetch(2).unbatch()
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options()).as_numpy_iterator()


# ---- Evaluation stream ----


def num_eval_batches(num_images: int, batch_size: int) -> int:
  """Global eval batches needed to cover every image once (last one padded)."""
  return math.ceil(num_images / batch_size)


def eval_batches(data: FileList, *, batch_size: int, image_size: tuple[int, int],
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every image exactly once in file order, in fixed-size global batches (last one padded).

  Yields {'image': uint8 [B/pc, H, W, 3], 'label': int32 raw label, 'index': int32 filelist row,
  'mask': bool}; padding rows are zero images with label -1, index -1 and mask False. Process i
  gets rows [b*B + i*B/pc, b*B + (i+1)*B/pc) of global batch b, so concatenating the processes'
  batches in process order gives the global batch; batch_size is a multiple of process_count.
  """
  local_batch = batch_size // process_count
  num_batches = num_eval_batches(data.num_images, batch_size)
  global_rows = np.full(num_batches * batch_size, -1, np.int32)
  global_rows[:data.num_images] = np.arange(data.num_images)
  rows = global_rows.reshape(num_batches, process_count, local_batch)[:, process_index].reshape(-1)
  full_paths = tf.constant([os.path.join(data.image_root, path) for path in data.paths])
  labels = tf.constant(data.labels.astype(np.int32))
  size = tuple(image_size)

  def load(row):
    real = row >= 0
    safe_row = tf.maximum(row, 0)
    image = tf.cond(real, lambda: _load_image(tf.gather(full_paths, safe_row), size),
                    lambda: tf.zeros((*size, 3), tf.uint8))
    label = tf.where(real, tf.gather(labels, safe_row), -1)
    return {"image": image, "label": label, "index": row, "mask": real}

  ds = tf.data.Dataset.from_tensor_slices(rows)
  ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE).with_options(_options())

  def batches():
    try:
      yield from ds.as_numpy_iterator()
    except tf.errors.OpError as e:  # TF's message names no file: find the first bad one
      raise ValueError(_undecodable_image_error(data, e)) from None
  return batches()


def _undecodable_image_error(data: FileList, error: Exception) -> str:
  """Names the first image of `data` that TF cannot decode (only run after a failure)."""
  for path, lineno in zip(data.paths, data.lines, strict=True):
    full_path = os.path.join(data.image_root, path)
    try:
      tf.io.decode_image(tf.io.read_file(full_path), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
      return f"{data.source}:{lineno}: cannot read image {full_path} ({e.message.strip()})"
  return f"{data.source}: reading the images failed: {error}"


# ---- Device side ----


def prefetch_to_mesh(batches: Iterator[dict[str, np.ndarray]], sharding: jax.sharding.Sharding,
                     size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Moves process-local host batches onto the mesh, keeping `size` transfers in flight.

  The global array is the concatenation of all processes' local batches along the batch axis.
  """
  batches = iter(batches)
  queue = collections.deque()

  def enqueue(count: int) -> None:
    for batch in batches:
      queue.append(jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x), batch))
      if len(queue) >= count:
        return

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(size)
