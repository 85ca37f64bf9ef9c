"""Tests for convert_mot17.py on tiny hand-made MOT17-layout fixtures."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import convert_mot17

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 50, 30  # Frame size of the fixtures.
LINE = re.compile(r"^[A-Za-z0-9_-]+_\d{6}/\d{6}\.jpg \d+\n$")

# ---- Fixture helpers ----


def frame_pixels(frame: int) -> np.ndarray:
  """Grey ramp that differs per frame: a one-pixel shift or a wrong frame changes every pixel."""
  y, x = np.mgrid[0:H, 0:W]
  grey = (3 * x + 2 * y + 2 * (frame - 1)).astype(np.uint8)
  return np.stack([grey] * 3, axis=-1)


def write_seq(train_dir, name, rows, *, num_frames=10, ext=".png", seqinfo=None, digits=6,
              sep=","):
  """Writes one sequence: seqinfo.ini, img1/<frame>.png (lossless), gt/gt.txt from `rows`.

  `digits` is the frame-name width (DanceTrack: 8; 0: unpadded), `sep` the gt column separator
  (SportsMOT writes ", ").
  """
  seq_dir = os.path.join(train_dir, name)
  os.makedirs(os.path.join(seq_dir, "img1"))
  os.makedirs(os.path.join(seq_dir, "gt"))
  for frame in range(1, num_frames + 1):
    Image.fromarray(frame_pixels(frame)).save(
        os.path.join(seq_dir, "img1", f"{frame:0{digits}d}{ext}"), quality=100)
  if seqinfo is None:
    seqinfo = (f"[Sequence]\nname={name}\nimDir=img1\nframeRate=30\nseqLength={num_frames}\n"
               f"imWidth={W}\nimHeight={H}\nimExt={ext}\n")
  with open(os.path.join(seq_dir, "seqinfo.ini"), "w") as f:
    f.write(seqinfo)
  with open(os.path.join(seq_dir, "gt", "gt.txt"), "w") as f:
    f.writelines(sep.join(str(v) for v in row) + "\n" for row in rows)
  return seq_dir


def track(track_id, frames, box=(5, 3, 10, 12), flag=1, cls=1, vis=1.0):
  """gt rows of one track on the given frames."""
  return [(f, track_id, *box, flag, cls, vis) for f in frames]


def read_list(path, pattern: re.Pattern = LINE):
  """[(path, label)] of a list file whose every line matches `pattern`."""
  with open(path, newline="") as f:
    lines = f.readlines()
  for line in lines:
    assert pattern.match(line), repr(line)
  return [(line.split()[0], int(line.split()[1])) for line in lines]


def tree_bytes(root):
  """{relative path: bytes} of every file under root."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


@pytest.fixture
def two_seqs(tmp_path):
  """5 identities over 2 sequences (3 + 2); id 2 of seq 02 has only 3 crops."""
  train = tmp_path / "MOT17" / "train"
  write_seq(train, "MOT17-02-FRCNN",
            track(1, range(1, 11)) + track(2, [1, 2, 3]) + track(7, range(2, 10)))
  write_seq(train, "MOT17-04-FRCNN", track(3, range(1, 9)) + track(12, range(3, 11)))
  return tmp_path / "MOT17"


def run_cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "convert_mot17.py"), *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)


# ---- Layout, lists, split ----


def test_layout_lines_and_split(two_seqs):
  out = two_seqs / "reid"
  summary = convert_mot17.convert(str(two_seqs), num_workers=1)  # Default output: <input>/reid.
  assert sorted(os.listdir(out)) == ["imgs", "meta"]
  assert sorted(os.listdir(out / "meta")) == ["train.txt", "train_80.txt", "val_20.txt"]
  train = read_list(out / "meta" / "train_80.txt")
  val = read_list(out / "meta" / "val_20.txt")
  # N = 5 identities before the min-per-person filter -> int(5 * 0.8) = 4 sorted folders to train;
  # MOT17-02-FRCNN_000002 (3 crops < 8) is then dropped, so train keeps 3 labels, val 1.
  assert train == (
      [(f"MOT17-02-FRCNN_000001/{f:06d}.jpg", 0) for f in range(1, 11)]
      + [(f"MOT17-02-FRCNN_000007/{f:06d}.jpg", 1) for f in range(2, 10)]
      + [(f"MOT17-04-FRCNN_000003/{f:06d}.jpg", 2) for f in range(1, 9)])
  assert val == [(f"MOT17-04-FRCNN_000012/{f:06d}.jpg", 0) for f in range(3, 11)]
  # train.txt (MMDetection's whole-dataset list): val labels continue after train labels.
  assert read_list(out / "meta" / "train.txt") == train + [(p, label + 3) for p, label in val]
  # Exactly the listed crops exist, nothing else.
  listed = {p for p, _ in train + val}
  on_disk = {os.path.relpath(os.path.join(d, n), out / "imgs")
             for d, _, files in os.walk(out / "imgs") for n in files}
  assert on_disk == listed
  assert summary["train_identities"] == 3 and summary["val_identities"] == 1
  assert summary["train_images"] == 26 and summary["val_images"] == 8
  assert summary["identities_dropped_min_per_person"] == 1
  assert summary["dropped_rows"]["min_per_person"] == 3


def test_split_names():
  assert convert_mot17.split_names(0.2) == ("train_80.txt", "val_20.txt")
  assert convert_mot17.split_names(0.57) == ("train_43.txt", "val_57.txt")  # MMDet: val_56
  assert convert_mot17.split_names(0.125) == ("train_87.5.txt", "val_12.5.txt")
  assert convert_mot17.split_names(0.3) == ("train_70.txt", "val_30.txt")
  # Extremes: plain decimals, never an exponent.
  assert convert_mot17.split_names(1e-5) == ("train_99.999.txt", "val_0.001.txt")
  assert convert_mot17.split_names(0.99999) == ("train_0.001.txt", "val_99.999.txt")


@pytest.mark.parametrize("val_split", [1e-7, 4e-7, 0.9999999])
def test_split_names_refuse_percent_that_rounds_to_0_or_100(val_split):
  with pytest.raises(convert_mot17.DataError, match=r"too close to 0 or 1: .* to (0|100)%"):
    convert_mot17.split_names(val_split)


@pytest.mark.parametrize("num,val_split,expected", [
    (180, 0.3, 126),  # float: int(180 * 0.7) == 125
    (10, 0.9, 1),     # float: int(10 * 0.09999999999999998) == 0
    (5, 0.2, 4), (5, 0.57, 2), (7, 0.5, 3), (100, 0.07, 93),
])
def test_num_train_identities_is_exact(num, val_split, expected):
  assert convert_mot17.num_train_identities(num, val_split) == expected


def test_val_split_09_on_ten_identities_keeps_one_for_train(tmp_path):
  rows = [row for tid in range(1, 11) for row in track(tid, range(1, 9))]
  write_seq(tmp_path / "train", "MOT20-01", rows)
  summary = convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), val_split=0.9,
                                  num_workers=1)
  assert (summary["train_identities"], summary["val_identities"]) == (1, 9)
  assert summary["train_list"] == "meta/train_10.txt"
  assert {p.split("/")[0] for p, _ in read_list(tmp_path / "out" / "meta" / "train_10.txt")} == {
      "MOT20-01_000001"}


def test_val_split_057_file_names_and_disjoint(two_seqs):
  out = two_seqs / "out"
  convert_mot17.convert(str(two_seqs), str(out), val_split=0.57, min_per_person=1, num_workers=1)
  assert sorted(os.listdir(out / "meta")) == ["train.txt", "train_43.txt", "val_57.txt"]
  train = read_list(out / "meta" / "train_43.txt")
  val = read_list(out / "meta" / "val_57.txt")
  train_ids = {p.split("/")[0] for p, _ in train}
  val_ids = {p.split("/")[0] for p, _ in val}
  # floor(5 * 0.43) = 2 train identities; identity splits are disjoint and labels contiguous.
  assert train_ids == {"MOT17-02-FRCNN_000001", "MOT17-02-FRCNN_000002"}
  assert not train_ids & val_ids and len(val_ids) == 3
  assert sorted({label for _, label in train}) == [0, 1]
  assert sorted({label for _, label in val}) == [0, 1, 2]
  # Labels follow sorted folder order.
  assert [label for p, label in val if p.startswith("MOT17-04-FRCNN_000012")][0] == 2


# ---- Row filters ----


def test_filters_class_flag_visibility_outside(tmp_path):
  rows = (track(1, range(1, 11))
          + track(2, range(1, 6), cls=7) + track(2, range(6, 11))       # static person rows
          + track(3, range(1, 4), flag=0) + track(3, range(4, 11))      # consider flag 0 rows
          + track(4, range(1, 6), vis=0.29) + track(4, range(6, 11), vis=0.3)  # 0.3 is kept
          + track(5, range(1, 4), box=(W, 0, 10, 10))                   # starts at right edge
          + track(5, range(4, 6), box=(-20, -20, 20, 20))               # ends at top-left corner
          + track(5, range(6, 11), box=(-5, -5, 10, 10)))               # partly inside: kept
  write_seq(tmp_path / "train", "MOT20-01", rows)
  summary = convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), val_split=0.2,
                                  min_per_person=1, num_workers=1)
  listed = read_list(tmp_path / "out" / "meta" / "train.txt")
  frames = {}
  for path, _ in listed:
    folder, name = path.split("/")
    frames.setdefault(folder, []).append(int(name[:6]))
  assert frames == {
      "MOT20-01_000001": list(range(1, 11)),
      "MOT20-01_000002": list(range(6, 11)),
      "MOT20-01_000003": list(range(4, 11)),
      "MOT20-01_000004": list(range(6, 11)),
      "MOT20-01_000005": list(range(6, 11)),
  }
  dropped = summary["dropped_rows"]
  assert (dropped["class"], dropped["consider_flag"], dropped["visibility"]) == (5, 3, 5)
  assert dropped["outside_image"] == 5


def test_vis_threshold_flag(tmp_path):
  write_seq(tmp_path / "train", "MOT20-01",
            track(1, range(1, 11), vis=0.5) + track(2, range(1, 11), vis=0.8)
            + track(3, range(1, 11), vis=0.6))
  summary = convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), vis_threshold=0.6,
                                  min_per_person=1, num_workers=1)
  listed = read_list(tmp_path / "out" / "meta" / "train.txt")
  assert {p.split("/")[0] for p, _ in listed} == {"MOT20-01_000002", "MOT20-01_000003"}
  assert summary["dropped_rows"]["visibility"] == 10


def test_mot15_world_coordinates_are_not_class_or_visibility(tmp_path):
  # Columns 8-10 of a MOT15 row are world x, y, z: a "class" of 2.5 or "visibility" of 0.1 there
  # must not drop the row. Column 7 = 0 (ignore) still drops it.
  rows = ([(f, 1, 5, 3, 10, 12, 1, 2.5, 7.25, 0) for f in range(1, 9)]
          + [(f, 2, 5, 3, 10, 12, 1, 3, 0.1, 0) for f in range(1, 9)]
          + [(f, 3, 5, 3, 10, 12, 0, -1, -1, -1) for f in range(1, 9)])
  write_seq(tmp_path / "train", "TUD-Stadtmitte", rows)
  summary = convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), min_per_person=1,
                                  num_workers=1)
  listed = read_list(tmp_path / "out" / "meta" / "train.txt")
  assert {p.split("/")[0] for p, _ in listed} == {"TUD-Stadtmitte_000001", "TUD-Stadtmitte_000002"}
  dropped = summary["dropped_rows"]
  assert (dropped["class"], dropped["visibility"], dropped["consider_flag"]) == (0, 0, 8)


def test_mot15_rows_count_as_visible_pedestrians(tmp_path):
  rows = [(f, tid, 5, 3, 10, 12, 1, -1, -1, -1) for tid in (1, 2) for f in range(1, 9)]
  write_seq(tmp_path / "train", "TUD-Campus", rows)
  convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), val_split=0.5, num_workers=1)
  listed = read_list(tmp_path / "out" / "meta" / "train.txt")
  assert [p for p, _ in listed] == [f"TUD-Campus_{tid:06d}/{f:06d}.jpg"
                                    for tid in (1, 2) for f in range(1, 9)]


def test_min_and_max_per_person(tmp_path):
  write_seq(tmp_path / "a" / "train", "MOT17-09-FRCNN",
            track(1, range(1, 4)) + track(2, range(1, 21)) + track(3, range(1, 5)),
            num_frames=20)

  def subset(seed, input_dir="a"):
    out = tmp_path / f"out-{input_dir}-{seed}"
    summary = convert_mot17.convert(str(tmp_path / input_dir), str(out), min_per_person=4,
                                    max_per_person=6, seed=seed, num_workers=1,
                                    overwrite=True)
    listed = read_list(out / "meta" / "train.txt")
    return summary, [p for p, _ in listed if p.startswith("MOT17-09-FRCNN_000002/")], listed

  summary, chosen, listed = subset(0)
  assert "MOT17-09-FRCNN_000001" not in {p.split("/")[0] for p, _ in listed}  # 3 < 4
  assert len([p for p, _ in listed if p.startswith("MOT17-09-FRCNN_000003/")]) == 4  # 4 == min
  assert len(chosen) == 6 and chosen == sorted(chosen) and len(set(chosen)) == 6
  assert summary["dropped_rows"]["min_per_person"] == 3
  assert summary["dropped_rows"]["max_per_person"] == 14
  assert subset(0)[1] == chosen  # Reproducible.
  assert len({tuple(subset(seed)[1]) for seed in range(4)}) > 1  # The seed matters.
  # The subset depends on (seed, identity name) only, not on other sequences being present.
  write_seq(tmp_path / "b" / "train", "MOT17-09-FRCNN",
            track(1, range(1, 4)) + track(2, range(1, 21)) + track(3, range(1, 5)),
            num_frames=20)
  write_seq(tmp_path / "b" / "train", "MOT17-05-FRCNN", track(4, range(1, 11)))
  assert subset(0, "b")[1] == chosen


# ---- Detector variants ----


@pytest.mark.parametrize("variants,kept", [(("DPM", "FRCNN", "SDP"), "FRCNN"),
                                           (("SDP", "DPM"), "DPM")])
def test_detector_variants_deduplicated_by_name(tmp_path, variants, kept):
  input_dir = tmp_path / "data" / "mot17"  # Lower case: MMDetection's path test misses this.
  rows = track(1, range(1, 11)) + track(2, range(1, 11))
  for v in variants:
    write_seq(input_dir / "train", f"MOT17-02-{v}", rows)
  write_seq(input_dir / "train", "MOT17-13-SDP", rows)  # Only one variant: kept as is.
  summary = convert_mot17.convert(str(input_dir), val_split=0.5, num_workers=1)
  folders = sorted(os.listdir(input_dir / "reid" / "imgs"))
  assert folders == [f"MOT17-02-{kept}_000001", f"MOT17-02-{kept}_000002",
                     "MOT17-13-SDP_000001", "MOT17-13-SDP_000002"]
  assert summary["sequences"] == [f"MOT17-02-{kept}", "MOT17-13-SDP"]
  assert summary["dropped_rows"]["duplicate_variant"] == 20 * (len(variants) - 1)


# ---- The MOTChallenge family: MOT20, DanceTrack, SportsMOT ----


def folders_and_frames(listed):
  """{identity folder: [frame, ...]} of list entries, in list order."""
  out = {}
  for path, _ in listed:
    folder, name = path.split("/")
    out.setdefault(folder, []).append(int(name[:-4]))
  return out


def test_mot20_style_has_no_detector_variants(tmp_path):
  # MOT20 (and MOT16) names carry no -DPM/-FRCNN/-SDP suffix: every sequence is its own.
  for seq, ids in (("MOT20-01", (1, 2)), ("MOT20-02", (1, 3)), ("MOT20-03", (4,)),
                   ("MOT20-05", (1, 2))):
    write_seq(tmp_path / "MOT20" / "train", seq,
              [row for tid in ids for row in track(tid, range(1, 9))])
  summary = convert_mot17.convert(str(tmp_path / "MOT20"), val_split=0.2, num_workers=1)
  assert summary["sequences"] == ["MOT20-01", "MOT20-02", "MOT20-03", "MOT20-05"]
  assert summary["duplicate_variant_sequences"] == []
  assert summary["dropped_rows"]["duplicate_variant"] == 0
  meta = tmp_path / "MOT20" / "reid" / "meta"
  train = folders_and_frames(read_list(meta / "train_80.txt"))
  val = folders_and_frames(read_list(meta / "val_20.txt"))
  # 7 identities: floor(7 * 0.8) = 5 to train, the last 2 sorted folders to val.
  assert list(train) == ["MOT20-01_000001", "MOT20-01_000002", "MOT20-02_000001",
                         "MOT20-02_000003", "MOT20-03_000004"]
  assert list(val) == ["MOT20-05_000001", "MOT20-05_000002"]
  assert all(frames == list(range(1, 9)) for frames in {**train, **val}.values())


def dancetrack_seqinfo(name, num_frames=10, width=W):
  """seqinfo.ini as DanceTrack writes it (20 fps, 8-digit .jpg frames)."""
  return (f"[Sequence]\nname={name}\nimDir=img1\nframeRate=20\nseqLength={num_frames}\n"
          f"imWidth={width}\nimHeight={H}\nimExt=.jpg\n")


@pytest.fixture
def dancetrack(tmp_path):
  """DanceTrack layout: train/ and val/ with gt, 8-digit .jpg names, gt rows ending 1,1,1."""
  root = tmp_path / "dancetrack"
  for split, seq, ids in (("train", "dancetrack0001", (1, 2, 3)), ("train", "dancetrack0002", (1,)),
                          ("val", "dancetrack0004", (1, 2))):
    write_seq(root / split, seq, [row for tid in ids for row in track(tid, range(2, 10))],
              ext=".jpg", digits=8, seqinfo=dancetrack_seqinfo(seq))
  os.makedirs(root / "test" / "dancetrack0003" / "img1")  # No gt: never read.
  return root


def test_dancetrack_style_8_digit_names(dancetrack):
  summary = convert_mot17.convert(str(dancetrack), val_split=0.25, jpeg_quality=100,
                                  num_workers=1)
  assert summary["splits"] == ["train"] and summary["sequences"] == [
      "dancetrack0001", "dancetrack0002"]
  listed = read_list(dancetrack / "reid" / "meta" / "train.txt")
  assert list(folders_and_frames(listed)) == [
      "dancetrack0001_000001", "dancetrack0001_000002", "dancetrack0001_000003",
      "dancetrack0002_000001"]
  assert (summary["train_identities"], summary["val_identities"]) == (3, 1)
  assert summary["train_images"] + summary["val_images"] == 4 * 8
  # The crop of frame 5 comes from 00000005.jpg (the frames differ by 2 grey levels each).
  crop = np.asarray(Image.open(dancetrack / "reid" / "imgs" / "dancetrack0001_000002" /
                               "000005.jpg").convert("RGB")).astype(int)
  assert crop.shape == (12, 10, 3)
  assert np.abs(crop - frame_pixels(5)[3:15, 5:15]).mean() < 1.0
  assert np.abs(crop - frame_pixels(6)[3:15, 5:15]).mean() > 1.5


def test_dancetrack_style_train_and_val_splits(dancetrack):
  out = dancetrack / "out"
  summary = convert_mot17.convert(str(dancetrack), str(out), val_split=0.2,
                                  splits=["train", "val"], num_workers=1)
  assert summary["splits"] == ["train", "val"]
  assert summary["sequences"] == ["dancetrack0001", "dancetrack0002", "dancetrack0004"]
  train = folders_and_frames(read_list(out / "meta" / "train_80.txt"))
  val = folders_and_frames(read_list(out / "meta" / "val_20.txt"))
  # 6 identities over both split folders; floor(6 * 0.8) = 4 sorted folders to train.
  assert list(train) == ["dancetrack0001_000001", "dancetrack0001_000002",
                         "dancetrack0001_000003", "dancetrack0002_000001"]
  assert list(val) == ["dancetrack0004_000001", "dancetrack0004_000002"]
  assert (summary["train_images"], summary["val_images"]) == (32, 16)
  assert len(read_list(out / "meta" / "train.txt")) == 48


def test_sportsmot_style_layout(tmp_path):
  # SportsMOT: dataset/{train,val}/v_<youtube id>_c<clip>, gt rows "1, 0, 83, ..." (spaces, ids
  # from 0), 6-digit .jpg names.
  root = tmp_path / "sportsmot_publish" / "dataset"
  for split, seq in (("train", "v_-6Os86HzwCs_c001"), ("val", "v_00HRwkvvjtQ_c001")):
    rows = [row for tid in (0, 1) for row in track(tid, range(1, 9))]
    write_seq(root / split, seq, rows, ext=".jpg", sep=", ",
              seqinfo=(f"[Sequence]\nname={seq}\nimDir=img1\nframeRate=25\nseqLength=10\n"
                       f"imWidth={W}\nimHeight={H}\nimExt=.jpg"))  # No final newline, as shipped.
  summary = convert_mot17.convert(str(root), val_split=0.5, splits=["train", "val"],
                                  num_workers=1)
  meta = root / "reid" / "meta"
  assert list(folders_and_frames(read_list(meta / "train_50.txt"))) == [
      "v_-6Os86HzwCs_c001_000000", "v_-6Os86HzwCs_c001_000001"]
  assert list(folders_and_frames(read_list(meta / "val_50.txt"))) == [
      "v_00HRwkvvjtQ_c001_000000", "v_00HRwkvvjtQ_c001_000001"]
  assert (summary["train_images"], summary["val_images"]) == (16, 16)


def test_frame_names_of_any_width(tmp_path):
  # Unpadded names (1.png ... 10.png) are found by number too; pixels come from the right frame.
  write_seq(tmp_path / "train", "CUSTOM-01",
            track(1, range(1, 11), box=(5, 3, 30, 20)) + track(2, range(1, 11)), digits=0)
  out = tmp_path / "out"
  convert_mot17.convert(str(tmp_path), str(out), min_per_person=1, jpeg_quality=100,
                        num_workers=1)
  for frame in (1, 10):
    crop = np.asarray(Image.open(out / "imgs" / "CUSTOM-01_000001" / f"{frame:06d}.jpg"))
    assert np.abs(crop.astype(int) - frame_pixels(frame)[3:23, 5:35]).mean() < 0.5


def test_two_images_for_one_frame_is_an_error(tmp_path):
  seq = write_seq(tmp_path / "train", "MOT20-01", track(1, range(1, 9)))
  Image.fromarray(frame_pixels(3)).save(os.path.join(seq, "img1", "00000003.png"))
  with pytest.raises(convert_mot17.DataError,
                     match=r"img1: frame 3 has two images, 00000003\.png and 000003\.png"):
    convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), num_workers=1)
  assert not (tmp_path / "out").exists()


def test_seqinfo_size_that_disagrees_with_the_images_is_a_warning(tmp_path, caplog):
  # DanceTrack's val/dancetrack0041 says imWidth=1440; its frames are 1920 wide. The image wins.
  write_seq(tmp_path / "val", "dancetrack0041",
            track(1, range(1, 9), box=(30, 3, 30, 12)) + track(2, range(1, 9)), ext=".jpg",
            digits=8, seqinfo=dancetrack_seqinfo("dancetrack0041", width=40))
  out = tmp_path / "out"
  convert_mot17.convert(str(tmp_path), str(out), splits=["val"], min_per_person=1,
                        num_workers=1)
  crop = Image.open(out / "imgs" / "dancetrack0041_000001" / "000001.jpg")
  assert crop.size == (W - 30, 12)  # Clipped at the image's 50 columns, not seqinfo's 40.
  warnings = [r.getMessage() for r in caplog.records if "cropping to the image" in r.getMessage()]
  assert len(warnings) == 1 and "image is 50x30 but" in warnings[0]
  assert "says 40x30" in warnings[0]


def test_sequence_in_two_splits_is_an_error(dancetrack):
  write_seq(dancetrack / "val", "dancetrack0001", track(1, range(1, 9)), ext=".jpg", digits=8,
            seqinfo=dancetrack_seqinfo("dancetrack0001"))
  with pytest.raises(convert_mot17.DataError, match=r"val/dancetrack0001: sequence also in "
                                                    r".*train/dancetrack0001"):
    convert_mot17.convert(str(dancetrack), splits=["train", "val"], num_workers=1)


def test_output_inside_any_split_read_is_refused(dancetrack):
  with pytest.raises(convert_mot17.DataError, match="input's .*val"):
    convert_mot17.convert(str(dancetrack), str(dancetrack / "val" / "reid"),
                          splits=["train", "val"], num_workers=1)
  # Without val in --splits the folder is not an input (this only checks the refusal logic).
  convert_mot17.convert(str(dancetrack), str(dancetrack / "val" / "reid"), num_workers=1)


@pytest.mark.parametrize("row,message", [
    ("1.5,1,5,3,10,12,1,1,1.0", r":2: frame must be an integer, got 1.5"),
    ("0,1,5,3,10,12,1,1,1.0", r":2: frame 0 outside 1\.\.10"),
    ("1,-3,5,3,10,12,1,1,1.0", r":2: negative id -3"),
    ("1,1,5,3,10,12,1,1,1.0", r":2: id 1 appears twice in frame 1 \(first on line 1\)"),
    ("1,2,5,3,nan,12,1,1,1.0", r":2: non-finite number"),
    ("1,2,5,3,10,12,1,1", r":2: expected 9 comma-separated columns"),
    ("1,2,1e308,3,1e308,12,1,1,1.0", r":2: box edge left\+width or top\+height overflows"),
    ("1,2,5,-1e308,10,-1e308,1,1,1.0", r":2: box edge left\+width or top\+height overflows"),
])
def test_read_gt_rejects_bad_rows(tmp_path, row, message):
  gt = tmp_path / "gt.txt"
  gt.write_text("1,1,5,3,10,12,1,1,1.0\n" + row + "\n")
  with pytest.raises(convert_mot17.DataError, match=re.escape(str(gt)) + message):
    convert_mot17.read_gt(str(gt), seq_length=10)


def test_seqinfo_name_must_match_folder(tmp_path):
  write_seq(tmp_path / "train", "MOT17-02-FRCNN", track(1, range(1, 9)),
            seqinfo=f"[Sequence]\nname=MOT17-05-FRCNN\nimDir=img1\nseqLength=10\nimWidth={W}\n"
                    f"imHeight={H}\nimExt=.png\n")
  with pytest.raises(convert_mot17.DataError, match="does not match the folder name"):
    convert_mot17.convert(str(tmp_path), str(tmp_path / "out"), num_workers=1)
  assert not (tmp_path / "out").exists()


# ---- Crop pixels ----


def test_crops_are_exact_clipped_slices(tmp_path):
  boxes = {
      1: ((5, 3, 30, 20), (5, 3, 35, 23)),       # inside: exactly 30x20 -> 20 rows x 30 columns
      2: ((-4, -6, 12, 16), (0, 0, 8, 10)),      # clipped at left/top
      3: ((40, 22, 30, 30), (40, 22, W, H)),     # clipped at right/bottom
      4: ((4.5, 2.4, 10.4, 7.7), (5, 2, 15, 10)),  # rounded half up: 4.5->5, 14.9->15, 10.1->10
  }
  rows = []
  for tid, (box, _) in boxes.items():
    rows += track(tid, [2, 7], box=box)
  write_seq(tmp_path / "train", "MOT17-11-FRCNN", rows)
  out = tmp_path / "out"
  convert_mot17.convert(str(tmp_path), str(out), min_per_person=1, jpeg_quality=100,
                        num_workers=1)
  for tid, (_, (left, top, right, bottom)) in boxes.items():
    for frame in (2, 7):
      crop_path = out / "imgs" / f"MOT17-11-FRCNN_{tid:06d}" / f"{frame:06d}.jpg"
      crop = np.asarray(Image.open(crop_path).convert("RGB")).astype(int)
      source = frame_pixels(frame).astype(int)
      assert crop.shape == (bottom - top, right - left, 3)
      assert np.abs(crop - source[top:bottom, left:right]).mean() < 0.5
      # A one-pixel shift or the other frame would differ by 2-3 grey levels everywhere.
      other = frame_pixels(9 - frame).astype(int)
      assert np.abs(crop - other[top:bottom, left:right]).mean() > 1.5


def test_crop_box_rounding():
  row = lambda *box: convert_mot17.GtRow(1, 1, 1, *box, 1, 1, 1.0)
  assert convert_mot17.crop_box(row(10, 20, 30, 40), 100, 100) == (10, 20, 40, 60)
  assert convert_mot17.crop_box(row(-0.6, 0.49, 5, 5), 100, 100) == (0, 0, 4, 5)
  assert convert_mot17.crop_box(row(99.5, 0, 5, 5), 100, 100) is None
  assert convert_mot17.crop_box(row(10, 10, 0.2, 5), 100, 100) is None  # rounds to zero width


# ---- Determinism ----


def test_byte_identical_across_runs_and_workers(two_seqs):
  convert_mot17.convert(str(two_seqs), str(two_seqs / "w1"), min_per_person=1, num_workers=1)
  convert_mot17.convert(str(two_seqs), str(two_seqs / "w2"), min_per_person=1, num_workers=2)
  convert_mot17.convert(str(two_seqs), str(two_seqs / "w1b"), min_per_person=1, num_workers=1)
  first = tree_bytes(two_seqs / "w1")
  assert len(first) == 37 + 3  # 37 crops + 3 lists
  assert tree_bytes(two_seqs / "w2") == first
  assert tree_bytes(two_seqs / "w1b") == first


# ---- Output safety ----


def test_refuses_non_empty_output_and_replaces_with_overwrite(two_seqs):
  out = two_seqs / "reid"
  convert_mot17.convert(str(two_seqs), str(out), num_workers=1)
  old = tree_bytes(out)
  with pytest.raises(convert_mot17.DataError, match="not empty"):
    convert_mot17.convert(str(two_seqs), str(out), num_workers=1)
  assert tree_bytes(out) == old
  # --overwrite replaces (never appends): new lists, no stale crops from the old run.
  convert_mot17.convert(str(two_seqs), str(out), min_per_person=1, overwrite=True, num_workers=1)
  new = tree_bytes(out)
  assert "imgs/MOT17-02-FRCNN_000002/000001.jpg" in new
  assert len(new["meta/train.txt"].splitlines()) == 37
  # Nothing left next to the output (no temp or moved-aside directories).
  assert sorted(os.listdir(two_seqs)) == ["reid", "train"]


def test_overwrite_keeps_old_output_when_new_run_fails(two_seqs, monkeypatch):
  out = two_seqs / "reid"
  convert_mot17.convert(str(two_seqs), str(out), num_workers=1)
  old = tree_bytes(out)
  # Fails validation: a garbled gt row.
  gt = two_seqs / "train" / "MOT17-04-FRCNN" / "gt" / "gt.txt"
  good_gt = gt.read_text()
  gt.write_text(good_gt + "11,3,5,3,oops,12,1,1,1.0\n")
  with pytest.raises(convert_mot17.DataError, match=r"gt\.txt:17: not a number"):
    convert_mot17.convert(str(two_seqs), str(out), overwrite=True, num_workers=1)
  assert tree_bytes(out) == old
  # Fails half-way through writing crops.
  gt.write_text(good_gt)
  calls = []

  def failing_write(task, jpeg_quality):
    calls.append(task)
    if len(calls) == 3:
      raise OSError("disk full")
    return 0

  monkeypatch.setattr(convert_mot17, "_write_frame", failing_write)
  with pytest.raises(OSError, match="disk full"):
    convert_mot17.convert(str(two_seqs), str(out), overwrite=True, num_workers=1)
  assert tree_bytes(out) == old
  assert sorted(os.listdir(two_seqs)) == ["reid", "train"]


def test_refuses_dangerous_outputs(two_seqs, tmp_path):
  for bad in (two_seqs, two_seqs / "train", two_seqs / "train" / "reid"):
    with pytest.raises(convert_mot17.DataError, match="input's"):
      convert_mot17.convert(str(two_seqs), str(bad), overwrite=True, num_workers=1)
  foreign = tmp_path / "home"
  foreign.mkdir()
  (foreign / "thesis.tex").write_text("precious")
  with pytest.raises(convert_mot17.DataError, match="not a converter output"):
    convert_mot17.convert(str(two_seqs), str(foreign), overwrite=True, num_workers=1)
  assert (foreign / "thesis.tex").read_text() == "precious"
  empty = tmp_path / "empty"
  empty.mkdir()
  convert_mot17.convert(str(two_seqs), str(empty), num_workers=1)  # An empty dir is fine.
  assert (empty / "meta" / "train_80.txt").exists()


def test_symlinked_output_is_written_through_to_its_target(two_seqs, tmp_path):
  disk = tmp_path / "disk"
  disk.mkdir()
  real = disk / "reid-real"
  real.mkdir()
  link = two_seqs / "reid"
  link.symlink_to(real, target_is_directory=True)
  summary = convert_mot17.convert(str(two_seqs), num_workers=1)
  assert summary["output_dir"] == str(link)
  assert link.is_symlink() and os.readlink(link) == str(real)
  assert sorted(os.listdir(real)) == ["imgs", "meta"]
  # The same safety rules apply to the target: not empty -> needs --overwrite.
  with pytest.raises(convert_mot17.DataError, match="not empty"):
    convert_mot17.convert(str(two_seqs), num_workers=1)
  convert_mot17.convert(str(two_seqs), min_per_person=1, overwrite=True, num_workers=1)
  assert len((real / "meta" / "train.txt").read_text().splitlines()) == 37
  assert link.is_symlink()
  # Temporary and moved-aside folders lived next to the target and are gone.
  assert sorted(os.listdir(disk)) == ["reid-real"]
  assert sorted(os.listdir(two_seqs)) == ["reid", "train"]


def test_symlinked_output_keeps_the_safety_checks(two_seqs, tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  (home / "thesis.tex").write_text("precious")
  bad = {
      "home": (home, "not a converter output"),
      "input": (two_seqs / "train", "input's"),
      "file": (home / "thesis.tex", r"symlink to .*thesis\.tex, which is not a directory"),
      "dangling": (tmp_path / "nowhere", r"broken symlink \(its target .*nowhere does not exist"),
  }
  for name, (target, message) in bad.items():
    link = tmp_path / f"link-{name}"
    link.symlink_to(target)
    with pytest.raises(convert_mot17.DataError, match=message):
      convert_mot17.convert(str(two_seqs), str(link), overwrite=True, num_workers=1)
  assert os.listdir(home) == ["thesis.tex"] and (home / "thesis.tex").read_text() == "precious"
  assert not (tmp_path / "nowhere").exists()


def test_warns_about_stale_temporary_folders_without_deleting(two_seqs, caplog):
  stale = [two_seqs / ".reid.tmp-0123abcd", two_seqs / ".reid.old-89abcdef"]
  for path in stale:
    path.mkdir()
  (two_seqs / ".other.tmp-00000000").mkdir()  # Another output's: not ours to mention.
  convert_mot17.convert(str(two_seqs), num_workers=1)
  warnings = [r.getMessage() for r in caplog.records if "interrupted run" in r.getMessage()]
  assert sorted(warnings) == sorted(f"{p}: left by an interrupted run; delete it unless a "
                                    "conversion is running" for p in stale)
  assert all(p.is_dir() for p in stale)


# ---- Command line ----


def test_cli_converts_and_prints_summary(two_seqs):
  result = run_cli(f"--input_dir={two_seqs}", "--num_workers=2")
  assert result.returncode == 0, result.stderr
  assert "train: 3 identities, 26 images" in result.stderr
  assert (two_seqs / "reid" / "meta" / "val_20.txt").exists()


def _bad_inputs():
  """(name, setup(input_dir) -> expected message regex, extra flags)."""
  def no_train(d):
    d.mkdir()
    return rf"{re.escape(str(d / 'train'))}: no such directory"

  def no_seqinfo(d):
    os.remove(write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9))) + "/seqinfo.ini")
    return r"MOT17-02-FRCNN/seqinfo\.ini: missing seqinfo\.ini"

  def seqinfo_missing_key(d):
    write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9)),
              seqinfo="[Sequence]\nname=MOT17-02-FRCNN\nimDir=img1\nseqLength=10\nimWidth=50\n"
                      "imExt=.png\n")
    return r"seqinfo\.ini: missing key 'imHeight'"

  def seqinfo_not_number(d):
    write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9)),
              seqinfo="[Sequence]\nname=MOT17-02-FRCNN\nimDir=img1\nseqLength=10\nimWidth=fifty\n"
                      "imHeight=30\nimExt=.png\n")
    return r"seqinfo\.ini:5: imWidth must be a positive integer, got 'fifty'"

  def seqinfo_garbled(d):
    write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9)),
              seqinfo="[Sequence]\nname=MOT17-02-FRCNN\nthis is not ini\n")
    return r"seqinfo\.ini:3: expected 'key=value'"

  def gt_columns(d):
    rows = track(1, range(1, 9))
    rows[4] = rows[4][:7]
    write_seq(d / "train", "MOT17-02-FRCNN", rows)
    return r"gt/gt\.txt:5: expected 9 comma-separated columns .*got 7"

  def gt_not_number(d):
    rows = track(1, range(1, 9))
    rows[2] = (3, 1, 5, "x", 10, 12, 1, 1, 1.0)
    write_seq(d / "train", "MOT17-02-FRCNN", rows)
    return r"gt/gt\.txt:3: not a number"

  def gt_frame_beyond_length(d):
    write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9)) + track(2, [11]))
    return r"gt/gt\.txt:9: frame 11 outside 1\.\.10"

  def image_missing(d):
    seq = write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 9)))
    os.remove(os.path.join(seq, "img1", "000004.png"))
    return r"img1/000004\.png: missing image \(referenced by .*gt/gt\.txt:4\)"

  def zero_identities(d):
    write_seq(d / "train", "MOT17-02-FRCNN", track(1, range(1, 5)))
    return r"train: no identities left after filtering"

  def image_missing_8_digits(d):
    seq = write_seq(d / "train", "dancetrack0001", track(1, range(1, 9)), ext=".jpg", digits=8,
                    seqinfo=dancetrack_seqinfo("dancetrack0001"))
    os.remove(os.path.join(seq, "img1", "00000004.jpg"))
    return r"img1/00000004\.jpg: missing image \(referenced by .*gt/gt\.txt:4\)"

  def image_folder_missing(d):
    seq = write_seq(d / "train", "MOT20-01", track(1, range(1, 9)))
    shutil.rmtree(os.path.join(seq, "img1"))
    return r"MOT20-01/img1: missing image folder \(imDir in .*seqinfo\.ini\)"

  def no_frame_images(d):
    seq = write_seq(d / "train", "MOT20-01", track(1, range(1, 9)), ext=".jpg")
    for name in os.listdir(os.path.join(seq, "img1")):
      os.rename(os.path.join(seq, "img1", name), os.path.join(seq, "img1", "frame" + name))
    return r"img1: no frame images named <number>\.jpg"

  return [no_train, no_seqinfo, seqinfo_missing_key, seqinfo_not_number, seqinfo_garbled,
          gt_columns, gt_not_number, gt_frame_beyond_length, image_missing, zero_identities,
          image_missing_8_digits, image_folder_missing, no_frame_images]


@pytest.mark.parametrize("setup", _bad_inputs(), ids=lambda f: f.__name__)
def test_cli_bad_input_is_one_line_error(tmp_path, setup):
  input_dir = tmp_path / "in"
  expected = setup(input_dir)
  result = run_cli(f"--input_dir={input_dir}", "--num_workers=1")
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
  assert lines[0].startswith("error: ") and re.search(expected, lines[0]), lines[0]
  if input_dir.exists():  # Nothing written, not even a temporary directory.
    assert not [n for n in os.listdir(input_dir) if n == "reid" or n.startswith(".")]


@pytest.mark.parametrize("splits,message", [
    ("train,val", r"dancetrack/val: no such directory \(expected <input_dir>/val/<sequence>/\)"),
    ("train,train", r"--splits names a folder twice: train,train"),
    ("../train", r"--splits must name split folders of the input"),
    ("", r"--splits must name split folders of the input"),
])
def test_cli_bad_splits_are_one_line_errors(tmp_path, splits, message):
  write_seq(tmp_path / "dancetrack" / "train", "dancetrack0001", track(1, range(1, 9)))
  result = run_cli(f"--input_dir={tmp_path / 'dancetrack'}", f"--splits={splits}",
                   "--num_workers=1")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
  assert sorted(os.listdir(tmp_path / "dancetrack")) == ["train"]


def test_cli_reads_train_and_val(tmp_path):
  root = tmp_path / "dancetrack"
  for split, seq in (("train", "dancetrack0001"), ("val", "dancetrack0004")):
    write_seq(root / split, seq, track(1, range(1, 9)) + track(2, range(1, 9)), ext=".jpg",
              digits=8, seqinfo=dancetrack_seqinfo(seq))
  result = run_cli(f"--input_dir={root}", "--splits=train,val", "--val_split=0.5",
                   "--num_workers=1")
  assert result.returncode == 0, result.stderr
  assert "sequences: 2 from train, val" in result.stderr
  assert "train: 2 identities, 16 images" in result.stderr
  assert "val:   2 identities, 16 images" in result.stderr


@pytest.mark.parametrize("val_split", ["0.9", "0.999"])
def test_cli_empty_train_split_is_an_error(two_seqs, val_split):
  result = run_cli(f"--input_dir={two_seqs}", f"--val_split={val_split}", "--num_workers=1")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "the train split is empty" in lines[0]
  assert sorted(os.listdir(two_seqs)) == ["train"]


def test_cli_os_error_while_planning_is_one_line(two_seqs, tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  result = run_cli(f"--input_dir={two_seqs}", f"--output_dir={blocker}/reid", "--num_workers=1")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [f"error: {blocker}: File exists"], result.stderr


HOOKS = """
import errno, os, sys, time
from absl import app
from PIL import Image
import convert_mot17

def slow_write(task, jpeg_quality):
  open(os.path.join(os.environ["HOOK_DIR"], f"worker-{os.getpid()}"), "w").close()
  time.sleep(60)
  return 0

def no_space(self, fp, *args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

if __name__ == "__main__":
  mode = sys.argv.pop(1)
  if mode == "slow":
    convert_mot17._write_frame = slow_write
  else:
    Image.Image.save = no_space
  convert_mot17.define_flags()
  app.run(convert_mot17.main)
"""


def start_with_hooks(tmp_path, mode, *args, **popen_args):
  """Runs the CLI with a slow or failing crop writer (workers import it from the script)."""
  hook_dir = tmp_path / "hooks"
  hook_dir.mkdir()
  (hook_dir / "hooks.py").write_text(HOOKS)
  env = dict(os.environ, HOOK_DIR=str(hook_dir), PYTHONPATH=ROOT)
  proc = subprocess.Popen([sys.executable, str(hook_dir / "hooks.py"), mode, *args], cwd=ROOT,
                          env=env, stderr=subprocess.PIPE, text=True, **popen_args)
  return proc, hook_dir


def wait_for_workers(proc, hook_dir, count):
  deadline = time.time() + 60
  while len([n for n in os.listdir(hook_dir) if n.startswith("worker-")]) < count:
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
    time.sleep(0.05)


def alive(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(") ")[1][0] != "Z"
  except FileNotFoundError:
    return False


@pytest.mark.parametrize("sig,workers,word", [(signal.SIGTERM, 2, "terminated"),
                                              (signal.SIGINT, 2, "interrupted"),
                                              (signal.SIGINT, 1, "interrupted")])
def test_cli_signal_cleans_up_and_stops_workers(two_seqs, tmp_path, sig, workers, word):
  out = two_seqs / "reid"
  # A new session, so that SIGINT goes to the whole group as Ctrl-C does.
  proc, hook_dir = start_with_hooks(tmp_path, "slow", f"--input_dir={two_seqs}",
                                    f"--num_workers={workers}", start_new_session=True)
  wait_for_workers(proc, hook_dir, min(workers, 2))
  assert [n for n in os.listdir(two_seqs) if n.startswith(".reid.tmp-")]
  os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=60)
  assert proc.returncode == 1
  assert "Traceback" not in stderr, stderr
  assert stderr.strip().splitlines()[-1] == f"error: {word}; {out} unchanged"
  assert sorted(os.listdir(two_seqs)) == ["train"]
  pids = [int(n.split("-")[1]) for n in os.listdir(hook_dir) if n.startswith("worker-")]
  assert not [pid for pid in pids if pid != proc.pid and alive(pid)]


def test_cli_disk_full_while_writing_is_one_line(two_seqs, tmp_path):
  proc, _ = start_with_hooks(tmp_path, "no_space", f"--input_dir={two_seqs}", "--num_workers=1")
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 1
  assert "Traceback" not in stderr, stderr
  last = stderr.strip().splitlines()[-1]
  assert re.fullmatch(rf"error: {re.escape(str(two_seqs))}/\.reid\.tmp-\w+/imgs/"
                      r"MOT17-02-FRCNN_000001/000001\.jpg: No space left on device", last), last
  assert sorted(os.listdir(two_seqs)) == ["train"]


@pytest.mark.parametrize("val_split", ["0", "1", "1.5", "-0.2"])
def test_cli_rejects_val_split_outside_open_interval(two_seqs, val_split):
  result = run_cli(f"--input_dir={two_seqs}", f"--val_split={val_split}")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f"error: --val_split must be in (0, 1), got {float(val_split)}"]
  assert not (two_seqs / "reid").exists()


# ---- Integration with the synthetic renderer ----


def test_synthetic_dataset_converts(tmp_path):
  synthetic_mot = pytest.importorskip("synthetic_mot")
  data = tmp_path / "SYNTH17"
  synthetic_mot.render_dataset(str(data), seed=0, num_sequences=2, num_frames=20, num_people=6,
                               width=320, height=180, variants=("DPM", "FRCNN"), num_workers=1)
  summary = convert_mot17.convert(str(data), min_per_person=4, num_workers=1)
  assert summary["sequences"] == ["SYNTH17-01-FRCNN", "SYNTH17-02-FRCNN"]
  assert summary["duplicate_variant_sequences"] == ["SYNTH17-01-DPM", "SYNTH17-02-DPM"]
  assert summary["train_identities"] > 0 and summary["val_identities"] > 0
  train = read_list(data / "reid" / "meta" / "train_80.txt")
  for path, _ in train[:20]:
    assert Image.open(data / "reid" / "imgs" / path).size[0] > 0
