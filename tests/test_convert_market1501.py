"""Tests for convert_market1501.py on generated Market-1501, DukeMTMC-reID and MSMT17 layouts."""

import io
import os
import re
import signal
import subprocess
import sys
import time
import zlib

import pytest
import test_convert_mot17
from PIL import Image
from test_convert_mot17 import tree_bytes

import convert_market1501

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^(train|query|gallery)_\d{4}/[^ /]+\.jpg \d+\n$")
# evaluate.py's `market_cameras` pattern, matched at the start of each file name: the lists must
# give it a camera for every query and gallery image, or the same-camera filter switches off.
EVAL_CAMERA = re.compile(r"-?[0-9]+_c([0-9]+)")

# ---- Generated layouts ----


def jpeg_bytes(name: str) -> bytes:
  """A tiny JPEG whose colour depends on the name, so every file's bytes differ."""
  seed = zlib.crc32(name.encode())
  buf = io.BytesIO()
  Image.new("RGB", (4, 8), (seed & 255, seed >> 8 & 255, seed >> 16 & 255)).save(buf, "JPEG")
  return buf.getvalue()


def write_images(folder, names):
  os.makedirs(folder, exist_ok=True)
  for name in names:
    with open(os.path.join(folder, name), "wb") as f:
      f.write(jpeg_bytes(name))


# Market-1501: train 3 persons / 13 images; query 2 persons / 3 images; gallery 3 real persons
# (0004 only there) / 9 images + 4 distractors (0000), 3 junk (-1); a Thumbs.db in two folders.
MARKET = {
    "bounding_box_train": (
        [f"0002_c1s1_00{f}451_0{i}.jpg" for f, i in ((1, 1), (2, 1), (3, 2))]
        + ["0002_c2s1_000501_01.jpg", "0002_c2s1_000601_01.jpg"]
        + ["0007_c1s2_000101_01.jpg", "0007_c1s2_000201_01.jpg", "0007_c3s2_000301_01.jpg",
           "0007_c3s2_000401_01.jpg"]
        + [f"0010_c6s4_00{f}101_00.jpg" for f in range(4)]),
    "query": ["0001_c1s1_001051_00.jpg", "0001_c2s1_001101_00.jpg", "0003_c3s1_000251_00.jpg"],
    "bounding_box_test": (
        ["0001_c1s1_001151_01.jpg", "0001_c1s1_001201_01.jpg", "0001_c4s2_000151_01.jpg",
         "0001_c4s2_000201_01.jpg", "0003_c3s1_000301_01.jpg", "0003_c5s1_000351_02.jpg",
         "0003_c5s1_000401_02.jpg", "0004_c2s1_000151_01.jpg", "0004_c2s1_000201_01.jpg"]
        + [f"-1_c{c}s1_000{c}01_00.jpg" for c in (1, 2, 3)]
        + [f"0000_c{c}s1_000{c}51_00.jpg" for c in (1, 2, 4, 6)]),
}

# DukeMTMC-reID: no junk or distractors; train 2 persons / 7; query 2 / 2; gallery 3 / 5.
DUKE = {
    "bounding_box_train": ["0002_c1_f0046182.jpg", "0002_c1_f0046302.jpg", "0002_c2_f0047000.jpg",
                           "0002_c2_f0047120.jpg", "0005_c6_f0030000.jpg", "0005_c6_f0030120.jpg",
                           "0005_c7_f0031000.jpg"],
    "query": ["0003_c1_f0050000.jpg", "0008_c5_f0060000.jpg"],
    "bounding_box_test": ["0003_c2_f0051000.jpg", "0003_c2_f0051120.jpg", "0008_c1_f0061000.jpg",
                          "0009_c8_f0070000.jpg", "0009_c8_f0070120.jpg"],
}


@pytest.fixture
def market(tmp_path):
  root = tmp_path / "Market-1501-v15.09.15"
  for folder, names in MARKET.items():
    write_images(root / folder, names)
  for folder in ("bounding_box_train", "bounding_box_test"):
    (root / folder / "Thumbs.db").write_bytes(b"not an image")
  (root / "gt_bbox").mkdir()  # Market ships more folders; they are not read.
  return root


@pytest.fixture
def duke(tmp_path):
  root = tmp_path / "DukeMTMC-reID"
  for folder, names in DUKE.items():
    write_images(root / folder, names)
  return root


# MSMT17 (v1 folder names; v2 renames train/ and test/): train persons 0000 (3 images + 1 in
# list_val) and 0001 (2 + 1); test persons 0000, 0001, 0002 (numbered from 0 again).
MSMT_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0",
                       "0000/0000_001_01_0303morning_0016_0.jpg 0",
                       "0000/0000_002_02_0303noon_0100_1.jpg 0",
                       "0001/0001_000_15_0113afternoon_0300_0.jpg 1",
                       "0001/0001_001_15_0113afternoon_0301_2.jpg 1"],
    "list_val.txt": ["0000/0000_003_02_0303noon_0101_1.jpg 0",
                     "0001/0001_002_15_0113afternoon_0302_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_03_0302morning_0020_0.jpg 0",
                       "0001/0001_000_07_0114noon_0500_1.jpg 1"],
    "list_gallery.txt": ["0000/0000_001_04_0302morning_0900_0.jpg 0",
                         "0000/0000_002_03_0302noon_0040_0.jpg 0",
                         "0001/0001_001_07_0114noon_0510_0.jpg 1",
                         "0002/0002_000_11_0114afternoon_0010_3.jpg 2"],
}


def write_msmt(root, version="v1"):
  train_dir, test_dir = convert_market1501.MSMT_IMAGE_DIRS[version]
  for list_name, lines in MSMT_LISTS.items():
    image_dir = root / (train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir)
    for line in lines:
      folder, name = line.split()[0].split("/")
      write_images(image_dir / folder, [name])
    (root / list_name).write_text("".join(line + "\n" for line in lines))
  return root


@pytest.fixture
def msmt(tmp_path):
  return write_msmt(tmp_path / "MSMT17_V1")


def read_list(path):
  return test_convert_mot17.read_list(path, LINE)


def run_cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "convert_market1501.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


# ---- Market-1501 and DukeMTMC-reID ----


def test_market_lists_labels_and_protocol(market):
  before = tree_bytes(market)
  summary = convert_market1501.convert(str(market))
  out = market / "reid"
  assert sorted(os.listdir(out)) == ["imgs", "meta"]
  assert sorted(os.listdir(out / "meta")) == ["gallery.txt", "query.txt", "train.txt"]
  train = read_list(out / "meta" / "train.txt")
  # Training labels are 0..K-1 in person order (MMDetection's ReIDDataset needs them contiguous).
  expected_train = sorted(MARKET["bounding_box_train"])
  assert train == [(f"train_{n[:4]}/{n}", {"0002": 0, "0007": 1, "0010": 2}[n[:4]])
                   for n in expected_train]
  # Query and gallery keep the person id; junk (-1) is left out, distractors (0000) keep label 0.
  assert read_list(out / "meta" / "query.txt") == [
      (f"query_{n[:4]}/{n}", int(n[:4])) for n in sorted(MARKET["query"])]
  gallery = read_list(out / "meta" / "gallery.txt")
  kept = sorted(n for n in MARKET["bounding_box_test"] if not n.startswith("-1"))
  assert gallery == [(f"gallery_{n[:4]}/{n}", int(n[:4])) for n in kept]
  assert [p for p, label in gallery if label == 0] == [
      f"gallery_0000/{n}" for n in kept if n.startswith("0000")]
  assert summary == {
      "layout": "folders", "output_dir": str(out),
      "train_identities": 3, "train_images": 13,
      "query_identities": 2, "query_images": 3,
      "gallery_identities": 3, "gallery_images": 13,
      "gallery_distractors": 4, "gallery_junk_left_out": 3,
      "train_junk_left_out": 0, "train_distractor_left_out": 0, "ignored_files": 2}
  # Images are byte-for-byte copies (not links), and the dataset itself is untouched.
  for path, _ in train + gallery:
    source = os.path.join(market, "bounding_box_train" if path.startswith("train") else
                          "bounding_box_test", path.split("/")[1])
    with open(out / "imgs" / path, "rb") as a, open(source, "rb") as b:
      assert a.read() == b.read()
    assert not os.path.samefile(out / "imgs" / path, source)
  assert {k: v for k, v in tree_bytes(market).items() if not k.startswith("reid/")} == before
  # Exactly the listed images exist.
  on_disk = {os.path.relpath(os.path.join(d, n), out / "imgs")
             for d, _, files in os.walk(out / "imgs") for n in files}
  assert on_disk == {p for p, _ in train + read_list(out / "meta" / "query.txt") + gallery}


def test_market_names_keep_the_camera_for_evaluation(market):
  convert_market1501.convert(str(market))
  for split in ("query", "gallery"):
    for path, _ in read_list(market / "reid" / "meta" / f"{split}.txt"):
      name = path.split("/")[1]
      match = EVAL_CAMERA.match(name)
      assert match and int(match.group(1)) == int(name.split("_c")[1][0]), name


def test_market_junk_and_distractors_in_train_are_left_out(market, caplog):
  # Market's own bounding_box_train has neither; another Market-style set might.
  write_images(market / "bounding_box_train", ["-1_c1s1_000001_00.jpg", "0000_c2s1_000001_00.jpg",
                                               "0000_c3s1_000001_00.jpg"])
  summary = convert_market1501.convert(str(market))
  train = read_list(market / "reid" / "meta" / "train.txt")
  assert len(train) == 13 and {label for _, label in train} == {0, 1, 2}
  assert (summary["train_junk_left_out"], summary["train_distractor_left_out"]) == (1, 2)
  assert any("left out 1 junk and 2 distractor training images" in r.getMessage()
             for r in caplog.records)


def test_duke_layout(duke):
  summary = convert_market1501.convert(str(duke), str(duke.parent / "duke-reid"))
  out = duke.parent / "duke-reid"
  assert [(s, summary[f"{s}_identities"], summary[f"{s}_images"])
          for s in ("train", "query", "gallery")] == [("train", 2, 7), ("query", 2, 2),
                                                       ("gallery", 3, 5)]
  assert read_list(out / "meta" / "train.txt")[:2] == [
      ("train_0002/0002_c1_f0046182.jpg", 0), ("train_0002/0002_c1_f0046302.jpg", 0)]
  assert read_list(out / "meta" / "query.txt") == [("query_0003/0003_c1_f0050000.jpg", 3),
                                                   ("query_0008/0008_c5_f0060000.jpg", 8)]
  gallery = read_list(out / "meta" / "gallery.txt")
  assert [label for _, label in gallery] == [3, 3, 8, 9, 9]
  assert [int(EVAL_CAMERA.match(p.split("/")[1]).group(1)) for p, _ in gallery] == [2, 2, 1, 8, 8]
  assert summary["gallery_distractors"] == summary["gallery_junk_left_out"] == 0


def test_lists_read_by_the_input_pipeline(market):
  input_pipeline = pytest.importorskip("input_pipeline")
  convert_market1501.convert(str(market))
  imgs = str(market / "reid" / "imgs")
  sizes = {}
  for split in ("train", "query", "gallery"):
    data = input_pipeline.read_filelist(str(market / "reid" / "meta" / f"{split}.txt"), imgs)
    sizes[split] = (data.num_images, len(set(data.labels.tolist())))
  assert sizes == {"train": (13, 3), "query": (3, 2), "gallery": (13, 4)}  # 3 persons + label 0


# ---- MSMT17 ----


@pytest.mark.parametrize("version,folder", [("v1", "MSMT17_V1"), ("v2", "MSMT17_V2")])
def test_msmt_lists_and_camera_names(tmp_path, version, folder):
  root = write_msmt(tmp_path / folder, version)
  summary = convert_market1501.convert(str(root))
  meta = root / "reid" / "meta"
  assert read_list(meta / "train.txt") == [
      ("train_0000/0000_c01_000_01_0303morning_0015_0.jpg", 0),
      ("train_0000/0000_c01_001_01_0303morning_0016_0.jpg", 0),
      ("train_0000/0000_c02_002_02_0303noon_0100_1.jpg", 0),
      ("train_0001/0001_c15_000_15_0113afternoon_0300_0.jpg", 1),
      ("train_0001/0001_c15_001_15_0113afternoon_0301_2.jpg", 1)]
  query = read_list(meta / "query.txt")
  gallery = read_list(meta / "gallery.txt")
  assert query == [("query_0000/0000_c03_000_03_0302morning_0020_0.jpg", 0),
                   ("query_0001/0001_c07_000_07_0114noon_0500_1.jpg", 1)]
  assert [label for _, label in gallery] == [0, 0, 1, 2]
  # evaluate.py's pattern finds the camera (the third field of the original name) everywhere.
  for path, _ in query + gallery:
    name = path.split("/")[1]
    assert int(EVAL_CAMERA.match(name).group(1)) == int(name.split("_")[3]), name
  assert (summary["layout"], summary["train_identities"], summary["train_images"],
          summary["query_images"], summary["gallery_identities"], summary["gallery_images"]) == (
              "lists", 2, 5, 2, 3, 4)
  # The original name is the output name without the inserted `c<camera>_`.
  source = root / convert_market1501.MSMT_IMAGE_DIRS[version][1] / "0002"
  with open(source / "0002_000_11_0114afternoon_0010_3.jpg", "rb") as f:
    assert (root / "reid" / "imgs" / "gallery_0002" /
            "0002_c11_000_11_0114afternoon_0010_3.jpg").read_bytes() == f.read()


def test_msmt_with_val_adds_list_val_to_train(msmt):
  summary = convert_market1501.convert(str(msmt), with_val=True)
  train = read_list(msmt / "reid" / "meta" / "train.txt")
  assert (summary["train_identities"], summary["train_images"]) == (2, 7)
  assert ("train_0000/0000_c02_003_02_0303noon_0101_1.jpg", 0) in train
  assert ("train_0001/0001_c15_002_15_0113afternoon_0302_0.jpg", 1) in train


def test_msmt_list_paths_from_the_dataset_root_are_accepted(msmt):
  # Lines written as train/0000/... (relative to the dataset, not to train/) mean the same.
  lines = (msmt / "list_train.txt").read_text().splitlines()
  (msmt / "list_train.txt").write_text("".join(f"train/{line}\n" for line in lines))
  convert_market1501.convert(str(msmt))
  assert len(read_list(msmt / "reid" / "meta" / "train.txt")) == 5


# ---- Bad input ----


def _bad_inputs():
  """(name, setup(tmp_path) -> (input_dir, expected message regex), extra flags)."""
  def unknown_camera_pattern(tmp):
    root = tmp / "Market"
    for folder, names in MARKET.items():
      write_images(root / folder, names)
    write_images(root / "bounding_box_train", ["0002_cam1_000451_01.jpg"])
    return root, r"bounding_box_train/0002_cam1_000451_01\.jpg: unknown camera pattern"

  def junk_query(tmp):
    root = tmp / "Market"
    for folder, names in MARKET.items():
      write_images(root / folder, names)
    write_images(root / "query", ["-1_c1s1_000151_00.jpg"])
    return root, r"query/-1_c1s1_000151_00\.jpg: a query must show a real person, not a junk"

  def distractor_query(tmp):
    root = tmp / "Duke"
    for folder, names in DUKE.items():
      write_images(root / folder, names)
    write_images(root / "query", ["0000_c1_f0000001.jpg"])
    return root, r"query/0000_c1_f0000001\.jpg: a query must show a real person, not a distractor"

  def missing_folder(tmp):
    root = tmp / "Market"
    for folder in ("bounding_box_train", "query"):
      write_images(root / folder, MARKET[folder])
    return root, r"Market/bounding_box_test: missing folder"

  def msmt_label_minus_one(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    with open(root / "list_gallery.txt", "a") as f:
      f.write("0002/0002_000_11_0114afternoon_0010_3.jpg -1\n")
    return root, r"list_gallery\.txt:5: label -1: MSMT17 lists hold person ids >= 0"

  def msmt_missing_list(tmp):
    root = write_msmt(tmp / "MSMT17_V2", "v2")
    os.remove(root / "list_query.txt")
    return root, r"MSMT17_V2/list_query\.txt: missing list"

  def msmt_label_disagrees_with_name(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    text = (root / "list_train.txt").read_text().replace("0303noon_0100_1.jpg 0",
                                                          "0303noon_0100_1.jpg 1")
    (root / "list_train.txt").write_text(text)
    return root, r"list_train\.txt:3: label 1 but the name says person 0000"

  def msmt_missing_image(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    os.remove(root / "test" / "0002" / "0002_000_11_0114afternoon_0010_3.jpg")
    return root, (r"test/0002/0002_000_11_0114afternoon_0010_3\.jpg: missing image "
                  r"\(listed in .*list_gallery\.txt:4\)")

  def msmt_bad_name(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    write_images(root / "train" / "0001", ["0001_c1s1.jpg"])
    with open(root / "list_train.txt", "a") as f:
      f.write("0001/0001_c1s1.jpg 1\n")
    return root, r"list_train\.txt:6: unknown camera pattern in '0001_c1s1\.jpg'"

  def msmt_listed_twice(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    with open(root / "list_query.txt", "a") as f:
      f.write("0000/0000_000_03_0302morning_0020_0.jpg 0\n")
    return root, r"list_query\.txt:3: .* is listed twice \(first on .*list_query\.txt:1\)"

  def msmt_no_image_folders(tmp):
    root = write_msmt(tmp / "MSMT17_V1")
    os.rename(root / "test", root / "testing")
    return root, r"has neither of the MSMT17 image folders train/ and test/ or mask_train_v2/"

  def neither_layout(tmp):
    root = tmp / "MOT17"
    (root / "train").mkdir(parents=True)
    return root, r"MOT17: neither a Market-1501-style dataset"

  def dataset_one_folder_down(tmp):
    root = tmp / "market1501"
    for folder, names in MARKET.items():
      write_images(root / "Market-1501-v15.09.15" / folder, names)
    return root, r"market1501: neither .*; did you mean .*market1501/Market-1501-v15\.09\.15\?"

  def both_layouts(tmp):
    root = write_msmt(tmp / "Mixed")
    write_images(root / "query", MARKET["query"])
    return root, r"Mixed: holds both Market-1501-style folders \(query\) and MSMT17-style lists"

  def with_val_on_market(tmp):
    root = tmp / "Market"
    for folder, names in MARKET.items():
      write_images(root / folder, names)
    return root, r"--with_val is for MSMT17's list_val\.txt"

  return [unknown_camera_pattern, junk_query, distractor_query, missing_folder,
          msmt_label_minus_one, msmt_missing_list, msmt_label_disagrees_with_name,
          msmt_missing_image, msmt_bad_name, msmt_listed_twice, msmt_no_image_folders,
          neither_layout, dataset_one_folder_down, both_layouts, with_val_on_market]


@pytest.mark.parametrize("setup", _bad_inputs(), ids=lambda f: f.__name__)
def test_bad_input_is_an_error_before_writing(tmp_path, setup):
  input_dir, expected = setup(tmp_path)
  with_val = setup.__name__ == "with_val_on_market"
  with pytest.raises(convert_market1501.DataError, match=expected):
    convert_market1501.convert(str(input_dir), with_val=with_val)
  assert not [n for n in os.listdir(input_dir) if n == "reid" or n.startswith(".")]


@pytest.mark.parametrize("setup", [f for f in _bad_inputs() if f.__name__ in (
    "unknown_camera_pattern", "junk_query", "msmt_label_minus_one", "msmt_missing_list")],
    ids=lambda f: f.__name__)
def test_cli_bad_input_is_one_line_error(tmp_path, setup):
  input_dir, expected = setup(tmp_path)
  result = run_cli(f"--input_dir={input_dir}")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  assert lines[0].startswith("error: ") and re.search(expected, lines[0]), lines[0]
  assert not [n for n in os.listdir(input_dir) if n == "reid" or n.startswith(".")]


# ---- Output safety (dataset_output.py's rules, shared with convert_mot17.py) ----


def test_refuses_non_empty_output_and_replaces_with_overwrite(market, msmt):
  out = market / "reid"
  convert_market1501.convert(str(market))
  old = tree_bytes(out)
  with pytest.raises(convert_market1501.DataError, match="not empty"):
    convert_market1501.convert(str(market))
  assert tree_bytes(out) == old
  # --overwrite replaces, never merges: MSMT's lists and images replace Market's.
  convert_market1501.convert(str(msmt), str(out), overwrite=True)
  new = tree_bytes(out)
  assert not [k for k in new if "_c1s1_" in k]
  assert len(new["meta/train.txt"].splitlines()) == 5
  assert sorted(os.listdir(market)) == sorted([*MARKET, "gt_bbox", "reid"])


def test_refuses_outputs_that_would_lose_data(market, tmp_path):
  for bad in (market, market / "query", market / "bounding_box_test" / "reid"):
    with pytest.raises(convert_market1501.DataError, match="input's"):
      convert_market1501.convert(str(market), str(bad), overwrite=True)
  home = tmp_path / "home"
  home.mkdir()
  (home / "thesis.tex").write_text("precious")
  with pytest.raises(convert_market1501.DataError, match="not a converter output"):
    convert_market1501.convert(str(market), str(home), overwrite=True)
  assert os.listdir(home) == ["thesis.tex"]


def test_failure_while_copying_keeps_the_old_output(market, monkeypatch):
  out = market / "reid"
  convert_market1501.convert(str(market))
  old = tree_bytes(out)
  calls = []

  def failing_copy(src, dst):
    calls.append(src)
    if len(calls) == 5:
      raise OSError(28, "No space left on device", dst)
    with open(src, "rb") as a, open(dst, "wb") as b:
      b.write(a.read())

  monkeypatch.setattr(convert_market1501.shutil, "copyfile", failing_copy)
  with pytest.raises(OSError, match="No space left"):
    convert_market1501.convert(str(market), overwrite=True)
  assert tree_bytes(out) == old
  assert not [n for n in os.listdir(market) if n.startswith(".")]


def test_cli_converts_and_prints_summary(market):
  result = run_cli(f"--input_dir={market}")
  assert result.returncode == 0, result.stderr
  assert "train:   3 identities, 13 images (meta/train.txt)" in result.stderr
  assert "gallery: 3 identities, 13 images (meta/gallery.txt)" in result.stderr
  assert "gallery distractors kept (label 0): 4" in result.stderr
  assert "left out: 3 junk gallery images" in result.stderr
  assert (market / "reid" / "meta" / "gallery.txt").exists()


HOOK = """
import os, shutil, sys, time
from absl import app
import convert_market1501

def slow_copy(src, dst):
  open(os.environ["STARTED"], "w").close()
  time.sleep(60)

if __name__ == "__main__":
  shutil.copyfile = slow_copy
  convert_market1501.define_flags()
  app.run(convert_market1501.main)
"""


def test_cli_sigterm_while_copying_leaves_nothing(market, tmp_path):
  hook = tmp_path / "hook.py"
  hook.write_text(HOOK)
  started = tmp_path / "started"
  env = dict(os.environ, PYTHONPATH=ROOT, STARTED=str(started))
  proc = subprocess.Popen([sys.executable, str(hook), f"--input_dir={market}"], cwd=ROOT, env=env,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 60
  while not started.exists():
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
    time.sleep(0.05)
  assert [n for n in os.listdir(market) if n.startswith(".reid.tmp-")]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 1 and "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == f"error: terminated; {market / 'reid'} unchanged"
  assert sorted(os.listdir(market)) == sorted([*MARKET, "gt_bbox"])
