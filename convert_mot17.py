r"""Converts a MOTChallenge-format tracking dataset into a person ReID dataset (MMDetection's).

  python convert_mot17.py --input_dir=data/MOT17 --output_dir=data/MOT17/reid
  python convert_mot17.py --input_dir=data/dancetrack --splits=train,val

Reads MOT16, MOT17, MOT20, DanceTrack, SportsMOT or anything else in the MOTChallenge layout:
`<input_dir>/<split>/<SEQ>/{seqinfo.ini, gt/gt.txt, <imDir>/<frame><imExt>}` for every split folder
named by --splits (default `train`), and writes

  <output_dir>/imgs/<SEQ>_<id:06d>/<frame:06d>.jpg   one crop per kept gt row
  <output_dir>/meta/train_80.txt, meta/val_20.txt    lines `<SEQ>_<id:06d>/<frame:06d>.jpg <label>`
  <output_dir>/meta/train.txt                        both splits, val labels after train labels

The rules (rows kept, crop pixels, detector variants, split by identity, list names) and the
output safety are in docs/datasets.md; where they differ from MMDetection's `mot2reid.py`, and why,
in docs/differences.md. Lines are sorted by folder, then frame; only listed crops are written. All
input is validated before anything is written; the same input and flags give byte-identical output
with any --num_workers.
"""

import contextlib
import filecmp
import functools
import math
import multiprocessing
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from dataset_output import DataError, one_line_errors, prepare_output, publish, write_list

# ---- Constants ----

PEDESTRIAN = 1
DEFAULT_SPLITS = ("train",)
VARIANT_SUFFIX = re.compile(r"-(DPM|FRCNN|SDP)$")
PREFERRED_VARIANT = "FRCNN"
SEQINFO_INT_KEYS = ("seqLength", "imWidth", "imHeight")
SEQINFO_STR_KEYS = ("name", "imDir", "imExt")
GT_COLUMNS = (9, 10)  # MOT16/17/20 rows have 9 columns; MOT15 rows have 10 (x, y, z world coords).
MOT15_COLUMNS = 10
PERCENT_DECIMALS = 4  # List names: val_12.5.txt, val_0.0125.txt; never an exponent.
FRAMES_PER_TASK = 8  # Frames per pool task: amortises inter-process overhead, keeps the bar smooth.
DROP_REASONS = ("class", "consider_flag", "visibility", "outside_image", "min_per_person",
                "max_per_person", "duplicate_variant")


# ---- Reading MOT files ----


@dataclass(frozen=True)
class SeqInfo:
  """The fields of a sequence's seqinfo.ini that the converter uses."""
  name: str
  im_dir: str
  im_ext: str
  seq_length: int
  width: int
  height: int


def read_seqinfo(path: str) -> SeqInfo:
  """Parses a MOT `seqinfo.ini`; raises DataError naming the file (and line) if it is garbled."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: missing seqinfo.ini")
  values: dict[str, tuple[str, int]] = {}
  section = None
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, raw in enumerate(f, 1):
      line = raw.strip()
      if not line or line[0] in ";#":
        continue
      if line.startswith("[") and line.endswith("]"):
        section = line[1:-1].strip()
        continue
      if "=" not in line:
        raise DataError(f"{path}:{lineno}: expected 'key=value', got {line!r}")
      if section == "Sequence":
        key, value = (s.strip() for s in line.split("=", 1))
        values[key.lower()] = (value, lineno)
  fields: dict[str, Any] = {}
  for key in SEQINFO_STR_KEYS + SEQINFO_INT_KEYS:
    if key.lower() not in values:
      raise DataError(f"{path}: missing key '{key}' in [Sequence]")
    value, lineno = values[key.lower()]
    if key in SEQINFO_INT_KEYS:
      if not re.fullmatch(r"\d+", value) or int(value) <= 0:
        raise DataError(f"{path}:{lineno}: {key} must be a positive integer, got {value!r}")
      fields[key] = int(value)
    elif not value:
      raise DataError(f"{path}:{lineno}: {key} is empty")
    else:
      fields[key] = value
  return SeqInfo(name=fields["name"], im_dir=fields["imDir"], im_ext=fields["imExt"],
                 seq_length=fields["seqLength"], width=fields["imWidth"],
                 height=fields["imHeight"])


def frame_files(image_dir: str, im_ext: str, seqinfo_path: str) -> tuple[dict[int, str], int]:
  """Frame number -> file name of every `<digits><imExt>` file, and the narrowest name width.

  The width comes from the data: MOT names frames 000001.jpg, DanceTrack 00000001.jpg.
  """
  try:
    names = os.listdir(image_dir)
  except FileNotFoundError:
    raise DataError(f"{image_dir}: missing image folder (imDir in {seqinfo_path})") from None
  except NotADirectoryError:
    raise DataError(f"{image_dir}: not a folder (imDir in {seqinfo_path})") from None
  frames: dict[int, str] = {}
  for name in sorted(names):
    stem = name[:-len(im_ext)]
    if not name.endswith(im_ext) or not stem.isascii() or not stem.isdigit():
      continue
    frame = int(stem)
    if frame in frames:
      raise DataError(f"{image_dir}: frame {frame} has two images, {frames[frame]} and {name}")
    frames[frame] = name
  if not frames:
    raise DataError(f"{image_dir}: no frame images named <number>{im_ext} (imExt in "
                    f"{seqinfo_path})")
  return frames, min(len(n) - len(im_ext) for n in frames.values())


@dataclass(frozen=True)
class GtRow:
  """One gt.txt row; `line` is its 1-based line number in the file."""
  line: int
  frame: int
  track_id: int
  left: float
  top: float
  width: float
  height: float
  consider: int
  cls: int
  visibility: float


def _as_int(value: float, column: str, where: str) -> int:
  """Returns an integral float as int, else raises DataError."""
  if value != int(value):
    raise DataError(f"{where}: {column} must be an integer, got {value:g}")
  return int(value)


def read_gt(path: str, seq_length: int | None = None) -> list[GtRow]:
  """Parses a MOT gt.txt; raises DataError naming file:line for a malformed row."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: missing gt file")
  rows = []
  seen: dict[tuple[int, int], int] = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, raw in enumerate(f, 1):
      line = raw.strip()
      if not line:
        continue
      where = f"{path}:{lineno}"
      parts = line.split(",")
      if len(parts) not in GT_COLUMNS:
        raise DataError(f"{where}: expected 9 comma-separated columns (10 for MOT15), "
                        f"got {len(parts)}")
      try:
        nums = [float(p) for p in parts]
      except ValueError:
        raise DataError(f"{where}: not a number in {line!r}") from None
      if not all(math.isfinite(x) for x in nums):
        raise DataError(f"{where}: non-finite number in {line!r}")
      if not (math.isfinite(nums[2] + nums[4]) and math.isfinite(nums[3] + nums[5])):
        raise DataError(f"{where}: box edge left+width or top+height overflows in {line!r}")
      frame = _as_int(nums[0], "frame", where)
      track_id = _as_int(nums[1], "id", where)
      if frame < 1 or (seq_length is not None and frame > seq_length):
        raise DataError(f"{where}: frame {frame} outside 1..{seq_length} (seqLength)")
      if track_id < 0:
        raise DataError(f"{where}: negative id {track_id}")
      if (frame, track_id) in seen:
        raise DataError(f"{where}: id {track_id} appears twice in frame {frame} "
                        f"(first on line {seen[frame, track_id]})")
      seen[frame, track_id] = lineno
      if len(parts) == MOT15_COLUMNS:
        # Columns 8-10 are world x, y, z, not class/visibility: MMDetection counts every MOT15 box
        # as a visible pedestrian. Column 7 may be a confidence; 0 still means "ignore".
        cls, visibility, consider = PEDESTRIAN, 1.0, int(nums[6] != 0)
      else:
        # -1 marks class and visibility as not annotated (MOT15-style): a visible pedestrian.
        cls = PEDESTRIAN if nums[7] == -1 else _as_int(nums[7], "class", where)
        visibility = 1.0 if nums[8] == -1 else nums[8]
        consider = _as_int(nums[6], "consider flag", where)
      rows.append(GtRow(lineno, frame, track_id, *nums[2:6], consider, cls, visibility))
  return rows


def crop_box(row: GtRow, width: int, height: int) -> tuple[int, int, int, int] | None:
  """Returns the pixel box (left, top, right, bottom), right/bottom exclusive, clipped to the image.

  Coordinates are rounded half up, so an integer box keeps its exact size. None if no pixel is
  inside the image.
  """
  left = math.floor(row.left + 0.5)
  top = math.floor(row.top + 0.5)
  right = math.floor(row.left + row.width + 0.5)
  bottom = math.floor(row.top + row.height + 0.5)
  left, top = max(left, 0), max(top, 0)
  right, bottom = min(right, width), min(bottom, height)
  if right <= left or bottom <= top:
    return None
  return left, top, right, bottom


# ---- Planning (everything that is validated before writing) ----


def variant_base(name: str) -> str:
  """Sequence name without its detector suffix: 'MOT17-02-FRCNN' -> 'MOT17-02'."""
  return VARIANT_SUFFIX.sub("", name)


def pick_variants(names: Sequence[str]) -> tuple[list[str], list[str]]:
  """Splits sequence names into (kept, duplicates): one per base name, FRCNN when present."""
  groups: dict[str, list[str]] = {}
  for name in sorted(names):
    groups.setdefault(variant_base(name), []).append(name)
  kept, duplicates = [], []
  for base in sorted(groups):
    members = groups[base]
    preferred = [n for n in members if n == f"{base}-{PREFERRED_VARIANT}"]
    choice = preferred[0] if preferred else members[0]
    kept.append(choice)
    duplicates.extend(n for n in members if n != choice)
  return kept, duplicates


@dataclass
class Crop:
  """One crop to write: source image, pixel box and path relative to `imgs/`."""
  image: str
  box: tuple[int, int, int, int]
  relpath: str
  frame: int


@dataclass
class Plan:
  """The validated conversion: lists, crops to write and the summary."""
  train: list[tuple[str, int]] = field(default_factory=list)
  val: list[tuple[str, int]] = field(default_factory=list)
  crops: list[Crop] = field(default_factory=list)
  summary: dict[str, Any] = field(default_factory=dict)


def _count_rows(path: str) -> int:
  """Non-empty lines in a gt file (rows dropped as duplicate detector variants)."""
  if not os.path.isfile(path):
    return 0
  with open(path, "rb") as f:
    return sum(1 for line in f if line.strip())


def _identity_rng(seed: int, identity: str) -> np.random.Generator:
  """A Generator that depends only on the seed and the identity name (not on order or workers)."""
  return np.random.default_rng([seed, *identity.encode("utf-8")])


def _decimal(val_split: float) -> Fraction:
  """val_split as the decimal the user typed: 0.3 is exactly 3/10, not the float 0.29999..."""
  return Fraction(str(val_split))


def num_train_identities(num_identities: int, val_split: float) -> int:
  """MMDetection's floor(N * (1 - val_split)), without float truncation (0.3, N=180 -> 126)."""
  return math.floor(num_identities * (1 - _decimal(val_split)))


def _percent_text(pct: Fraction) -> str:
  """A percentage with up to PERCENT_DECIMALS decimals and no exponent: 80, 12.5, 0.001."""
  return f"{float(pct):.{PERCENT_DECIMALS}f}".rstrip("0").rstrip(".")


def split_names(val_split: float) -> tuple[str, str]:
  """File names of the two lists: 0.2 -> ('train_80.txt', 'val_20.txt'), 0.125 -> '..._12.5'."""
  val_pct = round(100 * _decimal(val_split), PERCENT_DECIMALS)
  if not 0 < val_pct < 100:
    raise DataError(f"--val_split={val_split} is too close to 0 or 1: the list names round it to "
                    f"{_percent_text(val_pct)}% (at {PERCENT_DECIMALS} decimals)")
  return f"train_{_percent_text(100 - val_pct)}.txt", f"val_{_percent_text(val_pct)}.txt"


def _image_size(path: str, gt_where: str) -> tuple[int, int]:
  """A frame's (width, height), reading only the header."""
  try:
    with Image.open(path) as im:
      return im.size
  except FileNotFoundError:
    raise DataError(f"{path}: missing image (referenced by {gt_where})") from None
  except OSError as e:
    raise DataError(f"{path}: unreadable image ({e})") from None


def list_sequences(input_dir: str, splits: Sequence[str]) -> dict[str, str]:
  """Sequence name -> its folder, over the split folders; a name in two splits is an error."""
  where: dict[str, str] = {}
  for split in splits:
    split_dir = os.path.join(input_dir, split)
    if not os.path.isdir(split_dir):
      raise DataError(f"{split_dir}: no such directory (expected <input_dir>/{split}/<sequence>/)")
    names = sorted(n for n in os.listdir(split_dir)
                   if not n.startswith(".") and os.path.isdir(os.path.join(split_dir, n)))
    if not names:
      raise DataError(f"{split_dir}: no sequence directories")
    for name in names:
      seq_dir = os.path.join(split_dir, name)
      if name in where:
        raise DataError(f"{seq_dir}: sequence also in {where[name]}; identity folders "
                        f"<SEQ>_<id> would collide")
      where[name] = seq_dir
  return where


def plan_conversion(input_dir: str, *, val_split: float, vis_threshold: float, min_per_person: int,
                    max_per_person: int, seed: int, splits: Sequence[str] = DEFAULT_SPLITS) -> Plan:
  """Reads and validates every input file and decides every output byte except the JPEGs."""
  seq_dirs = list_sequences(input_dir, splits)
  kept, duplicates = pick_variants(list(seq_dirs))
  dropped = dict.fromkeys(DROP_REASONS, 0)
  dropped["duplicate_variant"] = sum(
      _count_rows(os.path.join(seq_dirs[n], "gt", "gt.txt")) for n in duplicates)
  kept_by_base = {variant_base(n): n for n in kept}
  for name in duplicates:
    gt_dup, gt_kept = (os.path.join(seq_dirs[n], "gt", "gt.txt")
                       for n in (name, kept_by_base[variant_base(name)]))
    if (os.path.isfile(gt_dup) and os.path.isfile(gt_kept)
        and not filecmp.cmp(gt_dup, gt_kept, shallow=False)):
      logging.warning("%s differs from %s; converting only the latter", gt_dup, gt_kept)

  identities: dict[str, list[Crop]] = {}
  for seq in kept:
    seq_dir = seq_dirs[seq]
    info_path = os.path.join(seq_dir, "seqinfo.ini")
    info = read_seqinfo(info_path)
    if info.name != seq:
      raise DataError(f"{info_path}: name={info.name} does not match the folder name {seq}")
    gt_path = os.path.join(seq_dir, "gt", "gt.txt")
    image_dir = os.path.join(seq_dir, info.im_dir)
    frames: dict[int, str] | None = None  # Listed on the first kept row: gt is validated first.
    sizes: dict[int, tuple[int, int]] = {}
    size_warned = False
    for row in read_gt(gt_path, info.seq_length):
      if row.cls != PEDESTRIAN:
        dropped["class"] += 1
        continue
      if row.consider == 0:
        dropped["consider_flag"] += 1
        continue
      if row.visibility < vis_threshold:
        dropped["visibility"] += 1
        continue
      if frames is None:
        frames, width = frame_files(image_dir, info.im_ext, info_path)
      image = os.path.join(image_dir,
                           frames.get(row.frame, f"{row.frame:0{width}d}{info.im_ext}"))
      if row.frame not in sizes:
        sizes[row.frame] = _image_size(image, f"{gt_path}:{row.line}")
        if sizes[row.frame] != (info.width, info.height) and not size_warned:
          size_warned = True
          logging.warning("%s: image is %dx%d but %s says %dx%d; cropping to the image",
                          image, *sizes[row.frame], info_path, info.width, info.height)
      box = crop_box(row, *sizes[row.frame])
      if box is None:
        dropped["outside_image"] += 1
        continue
      identity = f"{seq}_{row.track_id:06d}"
      identities.setdefault(identity, []).append(
          Crop(image, box, f"{identity}/{row.frame:06d}.jpg", row.frame))

  where = ", ".join(os.path.join(input_dir, split) for split in splits)
  # Split as MMDetection: count N before the min-per-person filter, then floor (exactly).
  folders = sorted(identities)
  num_train = num_train_identities(len(folders), val_split)
  plan = Plan()
  dropped_ids = 0
  for split, split_folders in (("train", folders[:num_train]), ("val", folders[num_train:])):
    lines = plan.train if split == "train" else plan.val
    label = 0
    for folder in split_folders:
      crops = sorted(identities[folder], key=lambda c: c.frame)
      if len(crops) < min_per_person:
        dropped["min_per_person"] += len(crops)
        dropped_ids += 1
        continue
      if len(crops) > max_per_person:
        chosen = _identity_rng(seed, folder).choice(len(crops), max_per_person, replace=False)
        dropped["max_per_person"] += len(crops) - max_per_person
        crops = [crops[i] for i in sorted(chosen)]
      lines.extend((c.relpath, label) for c in crops)
      plan.crops.extend(crops)
      label += 1
  num_train_ids = len({p.split("/")[0] for p, _ in plan.train})
  num_val_ids = len({p.split("/")[0] for p, _ in plan.val})
  if num_train_ids + num_val_ids == 0:
    raise DataError(f"{where}: no identities left after filtering ({len(folders)} before "
                    f"--min_per_person={min_per_person}); rows dropped: {dropped}")
  if num_train_ids == 0:
    why = (f"--min_per_person={min_per_person} drops all {num_train} train identities"
           if num_train else f"--val_split={val_split} puts all {len(folders)} identities in val")
    raise DataError(f"{where}: the train split is empty: {why}; lower --val_split or "
                    f"--min_per_person")
  plan.summary = {
      "splits": list(splits),
      "sequences": kept,
      "duplicate_variant_sequences": duplicates,
      "identities_before_min_per_person": len(folders),
      "identities_dropped_min_per_person": dropped_ids,
      "train_identities": num_train_ids,
      "train_images": len(plan.train),
      "val_identities": num_val_ids,
      "val_images": len(plan.val),
      "dropped_rows": dropped,
  }
  return plan


# ---- Writing ----


def _naming(e: OSError, path: str) -> OSError:
  """The error itself if it names a file, else one naming `path` (a decode or disk-full error)."""
  if e.filename is not None:
    return e
  return OSError(e.errno, e.strerror or str(e), path)


def _write_frame(task: tuple[str, list[tuple[tuple[int, int, int, int], str]]],
                 jpeg_quality: int) -> int:
  """Decodes one frame once and writes all of its crops; returns how many were written."""
  image_path, crops = task
  try:
    with Image.open(image_path) as im:
      im = im.convert("RGB")
  except OSError as e:  # Planning read only the header; the pixels may still be truncated.
    raise _naming(e, image_path) from None
  for box, out_path in crops:
    try:
      im.crop(box).save(out_path, "JPEG", quality=jpeg_quality)
    except OSError as e:
      raise _naming(e, out_path) from None
  return len(crops)


def _init_worker() -> None:
  """Pool workers ignore Ctrl-C: the parent gets it and terminates them (no traceback each)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _frame_tasks(crops: list[Crop], imgs_dir: str) -> list[tuple[str, list]]:
  """Groups crops by source frame so each frame is decoded once."""
  by_image: dict[str, list] = {}
  for c in crops:
    by_image.setdefault(c.image, []).append((c.box, os.path.join(imgs_dir, c.relpath)))
  return [(image, by_image[image]) for image in sorted(by_image)]


def _run_tasks(tasks: list, jpeg_quality: int, num_workers: int) -> Iterator[int]:
  """Runs frame tasks in-process (1 worker) or in a spawn pool, yielding crops written per frame."""
  if num_workers == 1:
    for task in tasks:
      yield _write_frame(task, jpeg_quality)
    return
  # spawn, not fork: callers (tests, notebooks) may already run JAX/TF threads that fork would copy.
  ctx = multiprocessing.get_context("spawn")
  with ctx.Pool(num_workers, initializer=_init_worker) as pool:  # __exit__ terminates workers
    write = functools.partial(_write_frame, jpeg_quality=jpeg_quality)
    yield from pool.imap_unordered(write, tasks, chunksize=FRAMES_PER_TASK)


def write_dataset(plan: Plan, out_dir: str, *, val_split: float, jpeg_quality: int,
                  num_workers: int) -> None:
  """Writes lists and crops into `out_dir` (an empty directory)."""
  meta_dir = os.path.join(out_dir, "meta")
  imgs_dir = os.path.join(out_dir, "imgs")
  os.makedirs(meta_dir)
  train_name, val_name = split_names(val_split)
  write_list(os.path.join(meta_dir, train_name), plan.train)
  write_list(os.path.join(meta_dir, val_name), plan.val)
  # MMDetection's train.txt: every identity, val labels continuing after the train labels.
  num_train_labels = plan.summary["train_identities"]
  write_list(os.path.join(meta_dir, "train.txt"),
              plan.train + [(relpath, label + num_train_labels) for relpath, label in plan.val])
  for folder in sorted({c.relpath.split("/")[0] for c in plan.crops}):
    os.makedirs(os.path.join(imgs_dir, folder))
  tasks = _frame_tasks(plan.crops, imgs_dir)
  # closing(): an exception (Ctrl-C, SIGTERM) shuts the pool down here, not whenever GC runs.
  with (tqdm(total=len(plan.crops), unit="crop", desc="crops", file=sys.stderr) as bar,
        contextlib.closing(_run_tasks(tasks, jpeg_quality, num_workers)) as results):
    for written in results:
      bar.update(written)


# ---- Public API ----


def _check_splits(splits: Sequence[str]) -> list[str]:
  """The --splits names: plain folder names, each once."""
  names = [s.strip() for s in splits]
  if not names or any(not n or n in (".", "..") or "/" in n or os.sep in n for n in names):
    raise DataError(f"--splits must name split folders of the input (like train,val), got "
                    f"{','.join(splits)!r}")
  if len(set(names)) != len(names):
    raise DataError(f"--splits names a folder twice: {','.join(splits)}")
  return names


def convert(input_dir: str, output_dir: str | None = None, *, val_split: float = 0.2,
            vis_threshold: float = 0.3, min_per_person: int = 8, max_per_person: int = 1000,
            seed: int = 0, num_workers: int | None = None, overwrite: bool = False,
            jpeg_quality: int = 95, splits: Sequence[str] = DEFAULT_SPLITS) -> dict[str, Any]:
  """Converts the `<input_dir>/<split>` folders into a ReID dataset at `output_dir`; a summary."""
  if not 0 < val_split < 1:
    raise DataError(f"--val_split must be in (0, 1), got {val_split}")
  split_names(val_split)  # Refuses a val_split the list names cannot express, before any work.
  if min_per_person < 1 or max_per_person < min_per_person:
    raise DataError(f"need 1 <= --min_per_person <= --max_per_person, got {min_per_person} and "
                    f"{max_per_person}")
  if seed < 0:
    raise DataError(f"--seed must be >= 0, got {seed}")
  if not 1 <= jpeg_quality <= 100:
    raise DataError(f"--jpeg_quality must be in 1..100, got {jpeg_quality}")
  if num_workers is None:
    num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
  if num_workers < 1:
    raise DataError(f"--num_workers must be >= 1, got {num_workers}")
  if output_dir is None:
    output_dir = os.path.join(input_dir, "reid")
  output_dir = os.path.abspath(output_dir)
  splits = _check_splits(splits)
  target = prepare_output(output_dir, [os.path.join(input_dir, s) for s in splits], overwrite)
  plan = plan_conversion(input_dir, val_split=val_split, vis_threshold=vis_threshold,
                         min_per_person=min_per_person, max_per_person=max_per_person, seed=seed,
                         splits=splits)
  publish(target, functools.partial(write_dataset, plan, val_split=val_split,
                                    jpeg_quality=jpeg_quality, num_workers=num_workers))
  if plan.summary["val_identities"] == 0:
    logging.warning("the val split is empty; lower --min_per_person or raise --val_split")
  train_list, val_list = split_names(val_split)
  return {**plan.summary, "output_dir": output_dir, "train_list": f"meta/{train_list}",
          "val_list": f"meta/{val_list}"}


# ---- Command line ----

def define_flags() -> None:
  """Declares the command-line flags."""
  # Called only when run as a script: other modules' CLIs use the same flag names (--output_dir,
  # --seed, ...) and absl rejects a name declared twice, so importing this module declares none.
  flags.DEFINE_string("input_dir", None, "MOTChallenge-format root containing <split>/<sequence>/.",
                      required=True)
  flags.DEFINE_list("splits", list(DEFAULT_SPLITS),
                    "Split folders of --input_dir to read (DanceTrack, SportsMOT: train,val).")
  flags.DEFINE_string("output_dir", None, "ReID dataset to write (default: <input_dir>/reid).")
  flags.DEFINE_float("val_split", 0.2, "Fraction of identities (sorted, last ones) for validation.")
  flags.DEFINE_float("vis_threshold", 0.3, "Keep gt rows with visibility >= this.")
  flags.DEFINE_integer("min_per_person", 8, "Drop identities with fewer crops.")
  flags.DEFINE_integer("max_per_person", 1000, "Subsample identities with more crops.")
  flags.DEFINE_integer("seed", 0, "Seed for the max_per_person subsampling.")
  flags.DEFINE_integer("num_workers", None, "Processes writing crops (default: all cores).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
  flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality of the crops (1..100).")


def format_summary(summary: dict[str, Any]) -> str:
  """A few readable lines for the log."""
  dropped = ", ".join(f"{k}={v}" for k, v in summary["dropped_rows"].items())
  return (f"wrote {summary['output_dir']}\n"
          f"  sequences: {len(summary['sequences'])} from {', '.join(summary['splits'])} "
          f"(skipped duplicate variants: {len(summary['duplicate_variant_sequences'])})\n"
          f"  train: {summary['train_identities']} identities, {summary['train_images']} images "
          f"({summary['train_list']})\n"
          f"  val:   {summary['val_identities']} identities, {summary['val_images']} images "
          f"({summary['val_list']})\n"
          f"  identities dropped by min_per_person: "
          f"{summary['identities_dropped_min_per_person']}\n"
          f"  rows dropped: {dropped}")


def main(argv: list[str]) -> None:
  """Runs the conversion from flags; user errors, I/O errors and interrupts exit with one line."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.input_dir, "reid")
  with one_line_errors(output_dir):
    summary = convert(FLAGS.input_dir, FLAGS.output_dir, val_split=FLAGS.val_split,
                      vis_threshold=FLAGS.vis_threshold, min_per_person=FLAGS.min_per_person,
                      max_per_person=FLAGS.max_per_person, seed=FLAGS.seed,
                      num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite,
                      jpeg_quality=FLAGS.jpeg_quality, splits=FLAGS.splits)
  logging.info("%s", format_summary(summary))


if __name__ == "__main__":
  define_flags()
  app.run(main)
