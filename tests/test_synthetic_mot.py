"""Tests for synthetic_mot.py: MOT17 layout, determinism, honest visibility, stable identities."""

import collections
import configparser
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_convert_mot17 import tree_bytes

import synthetic_mot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_sequences=2, num_frames=20, num_people=6, width=320, height=180)


def read_gt(path):
  """Parses gt.txt as a MOT17 reader would: 9 numeric columns per row."""
  rows = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      cols = line.rstrip("\n").split(",")
      assert len(cols) == 9, f"{path}:{lineno}: {line!r}"
      rows.append([int(c) for c in cols[:8]] + [float(cols[8])])
      assert cols[8] in ("0", "1") or (cols[8].startswith("0.") and len(cols[8]) <= 7), cols[8]
  return rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("synth") / "SYNTH17")
  dirs = synthetic_mot.render_dataset(root, seed=3, num_workers=1, **TINY)
  return root, dirs


# ---- Layout and formats ----


def test_layout_seqinfo_and_gt_format(tiny):
  root, dirs = tiny
  assert dirs == [os.path.join(root, "train", f"SYNTH17-0{i}-FRCNN") for i in (1, 2)]
  assert sorted(os.listdir(root)) == ["train"]
  for seq_dir in dirs:
    info = configparser.ConfigParser()
    info.read(os.path.join(seq_dir, "seqinfo.ini"))
    assert dict(info["Sequence"]) == {
        "name": os.path.basename(seq_dir), "imdir": "img1", "framerate": "30", "seqlength": "20",
        "imwidth": "320", "imheight": "180", "imext": ".jpg"}
    images = sorted(os.listdir(os.path.join(seq_dir, "img1")))
    assert images == [f"{i:06d}.jpg" for i in range(1, 21)]
    with Image.open(os.path.join(seq_dir, "img1", images[0])) as im:
      assert (im.format, im.size, im.mode) == ("JPEG", (320, 180), "RGB")
    rows = read_gt(os.path.join(seq_dir, "gt", "gt.txt"))
    assert [(r[1], r[0]) for r in rows] == sorted((r[1], r[0]) for r in rows)  # by id, frame
    assert len({(r[0], r[1]) for r in rows}) == len(rows)
    for frame, _, left, top, w, h, flag, cls, vis in rows:
      assert 1 <= frame <= 20 and w > 0 and h > 0 and 0 <= vis <= 1
      assert left < 320 and top < 180 and left + w > 0 and top + h > 0  # overlaps the image
      assert cls in (1, 3, 7, 8, 9, 10, 11) and flag in (0, 1)
      assert flag == 0 or cls == 1
    pedestrians = [r for r in rows if r[7] == 1 and r[6] == 1 and r[8] >= 0.3]
    crops = collections.Counter(r[1] for r in pedestrians)
    assert len(crops) >= 5 and all(n >= 8 for n in crops.values()), crops


def test_people_shrink_with_distance(tiny):
  rows = read_gt(os.path.join(tiny[1][0], "gt", "gt.txt"))
  feet = np.array([r[3] + r[5] for r in rows if r[7] == 1], float)
  heights = np.array([r[5] for r in rows if r[7] == 1], float)
  assert np.corrcoef(feet, heights)[0, 1] > 0.9  # lower in the image = nearer = taller


# ---- Determinism and variants ----


def test_bytes_identical_across_runs_and_worker_counts(tiny, tmp_path):
  root, _ = tiny
  again = synthetic_mot.render_dataset(str(tmp_path / "a"), seed=3, num_workers=2, **TINY)
  assert len(again) == 2
  assert tree_bytes(root) == tree_bytes(tmp_path / "a")
  other_seed = synthetic_mot.render_dataset(str(tmp_path / "b"), seed=4, num_workers=1, **TINY)
  assert tree_bytes(os.path.dirname(other_seed[0])) != tree_bytes(os.path.join(root, "train"))


def test_variants_are_identical_copies(tmp_path):
  dirs = synthetic_mot.render_dataset(str(tmp_path / "v"), variants=["SDP", "DPM", "FRCNN"],
                                      num_workers=1, **dict(TINY, num_sequences=1))
  assert [os.path.basename(d) for d in dirs] == [
      "SYNTH17-01-DPM", "SYNTH17-01-FRCNN", "SYNTH17-01-SDP"]
  trees = [tree_bytes(d) for d in dirs]
  for tree, seq_dir in zip(trees, dirs, strict=True):
    seqinfo = tree.pop("seqinfo.ini").decode()
    assert f"name={os.path.basename(seq_dir)}\n" in seqinfo
  assert trees[0] == trees[1] == trees[2]
  assert len(trees[0]) == 21


# ---- Visibility ----


def test_visibility_is_the_uncovered_part_of_the_own_mask(tiny):
  _, dirs = tiny
  scene = synthetic_mot.build_scene(3, 1, **{k: v for k, v in TINY.items()
                                             if k != "num_sequences"})
  gt = {(r[0], r[1]): r for r in read_gt(os.path.join(dirs[0], "gt", "gt.txt"))}
  partial = 0
  for t in (0, 7, 19):
    frame = synthetic_mot.render_frame(scene, t)
    depths = [o.depth for o in frame.objects]
    assert depths == sorted(depths)  # painted far to near
    covered = np.zeros((scene.height, scene.width), bool)
    expected = {}
    # Walk near to far: an object is hidden wherever something nearer was painted.
    for obj in reversed(frame.objects):
      left, top, w, h = obj.box
      canvas = np.zeros((scene.height + 2 * h, scene.width + 2 * w), bool)
      canvas[top + h:top + 2 * h, left + w:left + 2 * w] = obj.mask
      in_image = canvas[h:h + scene.height, w:w + scene.width]
      expected[obj.track_id] = (in_image & ~covered).sum() / obj.mask.sum()
      covered |= in_image
    for obj, vis in zip(frame.objects, frame.visibility, strict=True):
      assert vis == pytest.approx(expected[obj.track_id], abs=1e-12)
      row = gt[(t + 1, obj.track_id)]
      assert row[2:8] == [*obj.box, obj.flag, obj.cls]
      assert row[8] == pytest.approx(expected[obj.track_id], abs=5e-6)
      partial += 0 < vis < 1
    assert len(frame.objects) == sum(1 for key in gt if key[0] == t + 1)
  assert partial >= 3  # the check above saw real occlusion, not only fully visible people


def test_returned_masks_are_what_the_frame_shows():
  scene = synthetic_mot.build_scene(3, 1, **{k: v for k, v in TINY.items()
                                             if k != "num_sequences"})
  frame = synthetic_mot.render_frame(scene, 10)
  assert len(frame.objects) >= 5
  # Painting the returned sprites in the returned order onto the empty scene reproduces the
  # frame up to sensor noise, so the masks used for visibility are the pixels actually drawn.
  painted = scene.background.copy()
  for obj in frame.objects:
    left, top, w, h = obj.box
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + h, scene.height), min(left + w, scene.width)
    sprite = (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
    painted[y0:y1, x0:x1][obj.mask[sprite]] = obj.rgb[sprite][obj.mask[sprite]]
  painted = np.clip(painted * scene.light[..., None] * scene.gains[10], 0, 255)
  diff = np.abs(painted - frame.image.astype(np.float32))
  assert np.percentile(diff, 99) < 10
  empty = np.clip(scene.background * scene.light[..., None] * scene.gains[10], 0, 255)
  assert np.mean(np.abs(empty - frame.image) > 30) > 0.02  # people really were drawn


# ---- Appearance and annotation statistics ----


def test_identities_keep_their_look_across_frames(tmp_path):
  dirs = synthetic_mot.render_dataset(str(tmp_path / "look"), seed=1, num_sequences=1,
                                      num_frames=40, num_people=12, width=320, height=180,
                                      num_workers=1)
  rows = read_gt(os.path.join(dirs[0], "gt", "gt.txt"))
  features = collections.defaultdict(list)
  for frame, track, left, top, w, h, flag, cls, vis in rows:
    if cls != 1 or flag != 1 or vis < 0.9 or frame % 2 or left < 0 or left + w > 320:
      continue
    with Image.open(os.path.join(dirs[0], "img1", f"{frame:06d}.jpg")) as im:
      crop = np.asarray(im.crop((left, max(top, 0), left + w, min(top + h, 180))), np.float32)
    core = crop[:, w // 3: w - w // 3]  # the body, little background
    n = len(core)
    # Mean colour of head/torso/legs bands: a cheap appearance descriptor.
    bands = [core[int(a * n):int(b * n)].mean((0, 1)) for a, b in ((0, .15), (.2, .5), (.55, .9))]
    features[track].append(np.concatenate(bands))
  assert len(features) >= 8
  centroids = {k: np.mean(v, 0) for k, v in features.items()}
  correct = total = 0
  for track, feats in features.items():
    for f in feats:
      nearest = min(centroids, key=lambda k: np.linalg.norm(centroids[k] - f))
      correct += nearest == track
      total += 1
  assert correct / total > 0.8, correct / total


def test_palette_is_shared_but_identities_differ():
  scene = synthetic_mot.build_scene(0, 1, num_frames=1, num_people=30, width=320, height=180)
  keys = [synthetic_mot.look_key(look) for look in scene.looks]
  assert len(set(keys)) == 30
  top = [int(np.argmin(np.abs(synthetic_mot.TOPS - look.top).sum(1))) for look in scene.looks]
  bottom = [int(np.argmin(np.abs(synthetic_mot.BOTTOMS - look.bottom).sum(1)))
            for look in scene.looks]
  assert max(collections.Counter(top).values()) >= 3  # colour alone is not the identity
  assert len(set(zip(top, bottom, strict=True))) < 30


def test_class_and_flag_proportions_like_mot17():
  counts = collections.Counter()
  for index in (1, 2, 3):
    scene = synthetic_mot.build_scene(0, index, num_frames=60, num_people=30, width=320,
                                      height=180)
    for t in range(0, 60, 3):
      for obj in synthetic_mot.frame_objects(scene, t):
        counts[obj.cls, obj.flag] += 1
  total = sum(counts.values())
  assert 0.6 < counts[1, 1] / total < 0.85, counts
  assert 0 < counts[1, 0] / total < 0.1, counts  # a crowd region is not considered
  assert all(flag == 0 for cls, flag in counts if cls != 1)
  assert {7, 9}.issubset({cls for cls, _ in counts})


# ---- Output directory safety ----


def run_cli(*args):
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "synthetic_mot.py"), "--num_sequences=1",
       "--num_frames=2", "--num_people=2", "--width=64", "--height=64", "--num_workers=1", *args],
      capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_refuses_non_empty_output_even_with_overwrite(tmp_path):
  out = tmp_path / "data"
  out.mkdir()
  (out / "thesis.tex").write_text("user data")
  for args in ([], ["--overwrite"]):
    result = run_cli(f"--output_dir={out}", *args)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith(f"error: {out}: ")
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(out) == ["thesis.tex"]
  assert "not a synthetic_mot.py output (contains thesis.tex)" in result.stderr


def test_cli_overwrite_replaces_previous_output_and_its_reid_folder(tmp_path):
  out = tmp_path / "data"
  assert run_cli(f"--output_dir={out}").returncode == 0
  (out / "reid" / "meta").mkdir(parents=True)  # what convert_mot17.py writes by default
  (out / "reid" / "meta" / "train_80.txt").write_text("SYNTH17-01-FRCNN_000001/000001.jpg 0\n")
  result = run_cli(f"--output_dir={out}", "--overwrite", "--seed=1")
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(out) == ["train"]


@pytest.mark.parametrize("layout", [
    {"train/MOT17-02-FRCNN/gt/gt.txt": "1,1,1,1,1,1,1,1,1\n"},  # a real MOT17 train split
    {"train/SYNTH17-01-FRCNN/seqinfo.ini": "", "test/x": ""},   # anything beside train/ and reid/
    {"train/SYNTH17-01-FRCNN/seqinfo.ini": "", "reid/notes.txt": ""},
    {"reid/meta/train_80.txt": ""},                             # no train/
])
def test_overwrite_refuses_what_is_not_a_previous_output(tmp_path, layout):
  out = tmp_path / "data"
  for relpath, text in layout.items():
    (out / relpath).parent.mkdir(parents=True, exist_ok=True)
    (out / relpath).write_text(text)
  with pytest.raises(synthetic_mot.DatasetError, match="not a synthetic_mot.py output"):
    synthetic_mot.render_dataset(str(out), overwrite=True, num_workers=1, **TINY)
  assert sorted(os.listdir(tmp_path)) == ["data"]
  assert tree_bytes(out) == {k: v.encode() for k, v in layout.items()}


def test_failed_render_leaves_old_data_and_no_partial_output(tmp_path, monkeypatch):
  out = tmp_path / "data"
  (out / "train" / "SYNTH17-01-FRCNN").mkdir(parents=True)
  (out / "train" / "SYNTH17-01-FRCNN" / "seqinfo.ini").write_text("old")

  def broken(*args):
    raise RuntimeError("disk full")

  monkeypatch.setattr(synthetic_mot, "render_sequence", broken)
  with pytest.raises(RuntimeError):
    synthetic_mot.render_dataset(str(out), overwrite=True, num_workers=1, **TINY)
  with pytest.raises(RuntimeError):
    synthetic_mot.render_dataset(str(tmp_path / "new"), num_workers=1, **TINY)
  assert sorted(os.listdir(tmp_path)) == ["data"]
  assert tree_bytes(out) == {os.path.join("train", "SYNTH17-01-FRCNN", "seqinfo.ini"): b"old"}


def test_rejects_unknown_variant(tmp_path):
  with pytest.raises(ValueError, match="variants"):
    synthetic_mot.render_dataset(str(tmp_path / "x"), variants=["YOLO"], **TINY)
  assert not os.path.exists(tmp_path / "x")
