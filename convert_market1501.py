r"""Converts a Market-1501-style ReID benchmark into identity folders and MMDetection-style lists.

  python convert_market1501.py --input_dir=data/Market-1501-v15.09.15
  python convert_market1501.py --input_dir=data/DukeMTMC-reID
  python convert_market1501.py --input_dir=data/MSMT17_V1        # or data/MSMT17_V2

Reads one of two layouts, recognised by what --input_dir holds:
- folders (Market-1501, DukeMTMC-reID): bounding_box_train/, query/, bounding_box_test/, with the
  person and camera in every image name, `<person>_c<camera>...`: 0002_c1s1_000451_03.jpg (Market),
  0001_c2_f0046182.jpg (Duke). Person -1 is junk, person 0000 a distractor. Files that are not
  .jpg/.jpeg/.png (Market ships Thumbs.db) are ignored and counted.
- lists (MSMT17 v1 and v2): list_train.txt, list_query.txt, list_gallery.txt (list_val.txt with
  --with_val), lines `<path> <person>` with paths relative to train/ and test/ (v1) or
  mask_train_v2/ and mask_test_v2/ (v2); names `<person>_<index>_<camera>_<day><time>_...jpg`.

and writes

  <output_dir>/imgs/<list>_<person:04d>/<name>   a copy of every listed image
  <output_dir>/meta/train.txt     `train_0002/0002_c1s1_000451_03.jpg 0`: labels 0..K-1 by person
  <output_dir>/meta/query.txt     `query_0001/0001_c1s1_001051_00.jpg 1`: label = person id
  <output_dir>/meta/gallery.txt   `gallery_0001/0001_c1s6_011741_02.jpg 1`: label = person id

Protocol (Market-1501's evaluation code, as torchreid and fast-reid apply it):
- Junk (-1) is never an identity: left out of train and gallery (the official evaluation ignores
  it for every query), an error in query. Counted in the summary.
- Distractors (0000) are no training identity (left out of train, counted) and never a query (an
  error), but stay in the gallery with label 0 as negatives: no query has label 0, so they can
  never match. Real persons of a folder dataset are 0001 and up.
- Gallery images of the query's person *and* camera are ignored at evaluation time, not here:
  evaluate.py reads the camera from the file name (`<person>_c<camera>`), so Market and Duke keep
  their names. MSMT17 names hold the camera in the third field, so `c<camera>_` is inserted after
  the person: 0000_000_01_0303morning_0015_0.jpg -> 0000_c01_000_01_0303morning_0015_0.jpg.
- MSMT17 has no junk or distractors: a list label must be the person id (>= 0) that starts the file
  name. Its test persons are numbered from 0 like its train persons; query.txt and gallery.txt
  share the test numbering. Train is list_train.txt, the default of torchreid and fast-reid for
  comparable numbers; --with_val adds list_val.txt (the paper's 32,621-image training set).

Images are copied byte for byte, never linked or moved: the dataset is only read, and the output
can be edited or deleted without touching it. Everything is validated before anything is written;
output safety (--overwrite, hidden temporary folder renamed into place, one-line errors) is
dataset_output.py's, shared with convert_mot17.py.
"""

import functools
import os
import posixpath
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from absl import app, flags, logging
from tqdm import tqdm

from dataset_output import DataError, one_line_errors, prepare_output, publish, write_list

# ---- Constants ----

LISTS = ("train", "query", "gallery")
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
LIST_FILES = {"train": "list_train.txt", "query": "list_query.txt",
              "gallery": "list_gallery.txt", "val": "list_val.txt"}
MSMT_IMAGE_DIRS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MARKET_NAME = re.compile(r"(-1|[0-9]+)_c([0-9]+)")  # 0002_c1s1_000451_03.jpg
MSMT_NAME = re.compile(r"([0-9]+)_([0-9]+)_([0-9]+)_")  # 0000_000_01_0303morning_0015_0.jpg
JUNK, DISTRACTOR = -1, 0


@dataclass(frozen=True)
class Item:
  """One image to copy: its source file, person id and path relative to `imgs/`."""
  source: str
  person: int
  relpath: str


# ---- Folder layout: Market-1501, DukeMTMC-reID ----


def read_folder(folder: str, split: str, counts: dict[str, int]) -> list[Item]:
  """The images of one folder, with junk and distractors handled as `split` requires."""
  if not os.path.isdir(folder):
    raise DataError(f"{folder}: missing folder (a Market-1501-style dataset has "
                    f"{', '.join(FOLDERS.values())})")
  items = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not name.lower().endswith(IMAGE_EXTENSIONS) or not os.path.isfile(path):
      counts["ignored_files"] += 1
      continue
    match = MARKET_NAME.match(name)
    if not match:
      raise DataError(f"{path}: unknown camera pattern: expected <person>_c<camera>..., like "
                      f"0002_c1s1_000451_03.jpg or 0001_c2_f0046182.jpg")
    person = int(match.group(1))
    if person in (JUNK, DISTRACTOR):
      kind = "junk" if person == JUNK else "distractor"
      if split == "query":
        raise DataError(f"{path}: a query must show a real person, not a {kind} ({match.group(1)})")
      if split == "train" or person == JUNK:
        counts[f"{split}_{kind}_left_out"] += 1
        continue
      counts["gallery_distractors"] += 1
    items.append(Item(path, person, f"{split}_{person:04d}/{name}"))
  if not items:
    raise DataError(f"{folder}: no <person>_c<camera>... images of real persons")
  return items


# ---- List layout: MSMT17 v1/v2 ----


def msmt_image_dirs(input_dir: str) -> tuple[str, str]:
  """The (train, test) image folders of an MSMT17 v1 or v2 layout."""
  found = [dirs for dirs in MSMT_IMAGE_DIRS.values()
           if all(os.path.isdir(os.path.join(input_dir, d)) for d in dirs)]
  expected = " or ".join("/ and ".join(dirs) + "/" for dirs in MSMT_IMAGE_DIRS.values())
  if not found:
    raise DataError(f"{input_dir}: has neither of the MSMT17 image folders {expected}")
  if len(found) > 1:
    raise DataError(f"{input_dir}: has the image folders of both MSMT17 versions ({expected}); "
                    f"point at one version's folder")
  train_dir, test_dir = found[0]
  return os.path.join(input_dir, train_dir), os.path.join(input_dir, test_dir)


def read_list(list_path: str, image_dir: str, split: str) -> list[Item]:
  """The images of an MSMT17 list, `<path> <person>` per line, paths relative to `image_dir`."""
  prefix = os.path.basename(image_dir) + "/"
  items, seen = [], {}
  with open(list_path, encoding="utf-8", errors="replace") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{list_path}:{lineno}"
      parts = raw.strip().rsplit(None, 1)
      if not parts:
        continue
      if len(parts) != 2 or not re.fullmatch(r"-?[0-9]+", parts[1]):
        raise DataError(f"{where}: expected '<path> <person id>', got {raw.strip()!r}")
      path, person = posixpath.normpath(parts[0]), int(parts[1])
      if person < 0:
        raise DataError(f"{where}: label {person}: MSMT17 lists hold person ids >= 0 (no junk)")
      if path.startswith(prefix):  # Tolerate paths given from the dataset root.
        path = path[len(prefix):]
      if path.startswith(("/", "../")) or path == "..":
        raise DataError(f"{where}: path {parts[0]!r} is not inside {image_dir}")
      name = posixpath.basename(path)
      match = MSMT_NAME.match(name)
      if not match:
        raise DataError(f"{where}: unknown camera pattern in {name!r}: expected "
                        f"<person>_<index>_<camera>_..., like 0000_000_01_0303morning_0015_0.jpg")
      if int(match.group(1)) != person:
        raise DataError(f"{where}: label {person} but the name says person {match.group(1)}")
      source = os.path.join(image_dir, path)
      if not os.path.isfile(source):
        raise DataError(f"{source}: missing image (listed in {where})")
      person_text, camera = match.group(1), match.group(3)
      relpath = f"{split}_{person:04d}/{person_text}_c{camera}_{name[len(person_text) + 1:]}"
      if relpath in seen:
        raise DataError(f"{where}: {path} is listed twice (first on {seen[relpath]})")
      seen[relpath] = where
      items.append(Item(source, person, relpath))
  if not items:
    raise DataError(f"{list_path}: no images")
  return items


# ---- Planning ----


def detect_layout(input_dir: str) -> str:
  """'folders' (Market-1501, DukeMTMC-reID) or 'lists' (MSMT17), from what input_dir holds."""
  if not os.path.isdir(input_dir):
    raise DataError(f"{input_dir}: no such directory")
  folders = [f for f in FOLDERS.values() if os.path.isdir(os.path.join(input_dir, f))]
  lists = [f for f in LIST_FILES.values() if os.path.isfile(os.path.join(input_dir, f))]
  if folders and lists:
    raise DataError(f"{input_dir}: holds both Market-1501-style folders ({', '.join(folders)}) "
                    f"and MSMT17-style lists ({', '.join(lists)}); point at one dataset")
  if not folders and not lists:
    # The zips unpack into one folder (Market-1501-v15.09.15/, MSMT17_V1/): name it if it is there.
    inside = [e.path for e in sorted(os.scandir(input_dir), key=lambda e: e.name) if e.is_dir()
              and any(os.path.exists(os.path.join(e.path, n))
                      for n in (FOLDERS["train"], LIST_FILES["train"]))]
    hint = f"; did you mean {inside[0]}?" if inside else ""
    raise DataError(f"{input_dir}: neither a Market-1501-style dataset (bounding_box_train/, "
                    f"query/, bounding_box_test/) nor an MSMT17-style one (list_train.txt, "
                    f"list_query.txt, list_gallery.txt){hint}")
  return "folders" if folders else "lists"


def input_folders(input_dir: str) -> tuple[str, list[str]]:
  """The layout and the image folders it reads (the output may not be, hold or lie in one)."""
  layout = detect_layout(input_dir)
  if layout == "folders":
    return layout, [os.path.join(input_dir, FOLDERS[s]) for s in LISTS]
  return layout, list(msmt_image_dirs(input_dir))


def plan_conversion(input_dir: str, *, with_val: bool = False
                    ) -> tuple[dict[str, list[tuple[Item, int]]], dict[str, Any]]:
  """Reads and validates everything; returns ({list: [(item, label)]}, summary)."""
  layout, read_dirs = input_folders(input_dir)
  counts = dict.fromkeys(("train_junk_left_out", "train_distractor_left_out",
                          "gallery_junk_left_out", "gallery_distractors", "ignored_files"), 0)
  if layout == "folders":
    if with_val:
      raise DataError(f"{input_dir}: --with_val is for MSMT17's list_val.txt; this dataset has "
                      f"no val list")
    items = {s: read_folder(d, s, counts) for s, d in zip(LISTS, read_dirs, strict=True)}
  else:
    train_dir, test_dir = read_dirs
    splits = LISTS + (("val",) if with_val else ())
    paths = {s: os.path.join(input_dir, LIST_FILES[s]) for s in splits}
    for path in paths.values():  # All lists first: a missing one fails before any image check.
      if not os.path.isfile(path):
        raise DataError(f"{path}: missing list (an MSMT17-style dataset has "
                        f"{', '.join(LIST_FILES[s] for s in LISTS)})")
    items = {s: read_list(paths[s], train_dir if s in ("train", "val") else test_dir,
                          "train" if s == "val" else s) for s in splits}
    if with_val:
      train_paths = {it.relpath for it in items["train"]}
      for it in items.pop("val"):
        if it.relpath in train_paths:
          raise DataError(f"{paths['val']}: {it.source} is also in {paths['train']}")
        items["train"].append(it)
  # Training labels are contiguous (MMDetection's ReIDDataset needs 0..K-1); query and gallery
  # keep the person ids, so that the two lists agree on who is who.
  train_label = {p: i for i, p in enumerate(sorted({it.person for it in items["train"]}))}
  labelled = {"train": [(it, train_label[it.person]) for it in items["train"]],
              "query": [(it, it.person) for it in items["query"]],
              "gallery": [(it, it.person) for it in items["gallery"]]}
  summary: dict[str, Any] = {"layout": layout}
  for split in LISTS:
    persons = {it.person for it in items[split]}
    if layout == "folders":  # Distractors share label 0 but are nobody.
      persons.discard(DISTRACTOR)
    summary[f"{split}_identities"] = len(persons)
    summary[f"{split}_images"] = len(items[split])
  summary.update(counts)
  if summary["train_junk_left_out"] or summary["train_distractor_left_out"]:
    logging.warning("%s: left out %d junk and %d distractor training images (no identities)",
                    read_dirs[0], summary["train_junk_left_out"],
                    summary["train_distractor_left_out"])
  return labelled, summary


# ---- Writing ----


def write_dataset(labelled: dict[str, list[tuple[Item, int]]], out_dir: str) -> None:
  """Writes meta/{train,query,gallery}.txt and copies the images into `out_dir` (empty)."""
  meta_dir = os.path.join(out_dir, "meta")
  os.makedirs(meta_dir)
  for split in LISTS:
    lines = sorted((it.relpath, label) for it, label in labelled[split])
    write_list(os.path.join(meta_dir, f"{split}.txt"), lines)
  items = sorted((it for split in LISTS for it, _ in labelled[split]), key=lambda it: it.relpath)
  for folder in sorted({it.relpath.split("/")[0] for it in items}):
    os.makedirs(os.path.join(out_dir, "imgs", folder))
  for it in tqdm(items, unit="image", desc="images", file=sys.stderr):
    shutil.copyfile(it.source, os.path.join(out_dir, "imgs", it.relpath))


# ---- Public API ----


def convert(input_dir: str, output_dir: str | None = None, *, overwrite: bool = False,
            with_val: bool = False) -> dict[str, Any]:
  """Converts a Market-1501, DukeMTMC-reID or MSMT17 folder at `input_dir`; returns a summary."""
  if output_dir is None:
    output_dir = os.path.join(input_dir, "reid")
  output_dir = os.path.abspath(output_dir)
  # The output is checked before the (long) scan of the images.
  target = prepare_output(output_dir, input_folders(input_dir)[1], overwrite)
  labelled, summary = plan_conversion(input_dir, with_val=with_val)
  publish(target, functools.partial(write_dataset, labelled))
  return {**summary, "output_dir": output_dir}


# ---- Command line ----


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script, as convert_mot17.py does)."""
  flags.DEFINE_string("input_dir", None, "Market-1501, DukeMTMC-reID or MSMT17_V1/V2 folder.",
                      required=True)
  flags.DEFINE_string("output_dir", None, "ReID dataset to write (default: <input_dir>/reid).")
  flags.DEFINE_bool("with_val", False, "MSMT17: add list_val.txt to the training list.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def format_summary(summary: dict[str, Any]) -> str:
  """A few readable lines for the log."""
  lines = [f"wrote {summary['output_dir']} ({summary['layout']} layout)"]
  for split in LISTS:
    lines.append(f"  {split + ':':8} {summary[f'{split}_identities']} identities, "
                 f"{summary[f'{split}_images']} images (meta/{split}.txt)")
  lines.append(f"  gallery distractors kept (label 0): {summary['gallery_distractors']}")
  lines.append(f"  left out: {summary['gallery_junk_left_out']} junk gallery images, "
               f"{summary['train_junk_left_out']} junk and "
               f"{summary['train_distractor_left_out']} distractor training images; "
               f"{summary['ignored_files']} non-image files ignored")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  """Runs the conversion from flags; user errors, I/O errors and interrupts exit with one line."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  FLAGS = flags.FLAGS
  output_dir = FLAGS.output_dir or os.path.join(FLAGS.input_dir, "reid")
  with one_line_errors(output_dir):
    summary = convert(FLAGS.input_dir, FLAGS.output_dir, overwrite=FLAGS.overwrite,
                      with_val=FLAGS.with_val)
  logging.info("%s", format_summary(summary))


if __name__ == "__main__":
  define_flags()
  app.run(main)
