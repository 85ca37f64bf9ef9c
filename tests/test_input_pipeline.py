"""Tests for input_pipeline: file lists, P×K sampling, determinism, sharding, pixels."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

import input_pipeline as ip
import models

SIZE = (16, 8)  # Output H, W.
ALL_AUGMENT = ip.Augment(flip=True, pad=2, erasing_prob=0.5, color_jitter=0.3)
NO_AUGMENT = ip.Augment(flip=False)
ERASE_FILL = (124, 116, 104)  # ImageNet mean RGB, rounded.

# ---- Fixtures ----

# Identity i has raw label 100 + 7*i (not contiguous) and COUNTS[i] images (some fewer than K=3).
COUNTS = (1, 2, 3, 4, 5, 6, 3, 8)


def _identity_image(identity: int, frame: int) -> np.ndarray:
  """24x12 RGB: red encodes the identity, green the frame, blue a horizontal gradient."""
  image = np.zeros((24, 12, 3), np.uint8)
  image[..., 0] = 30 * identity + 10
  image[..., 1] = 20 * frame
  image[..., 2] = np.arange(12)[None, :] * 20
  image[:4, :3, 1] = 255  # An asymmetric corner, so flips and shifts are visible.
  return image


def _write_list(path, lines):
  with open(path, "w") as f:
    f.write("".join(line + "\n" for line in lines))
  return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A converter-style dataset: imgs/SEQ-0x_<id>/<frame>.png + meta/train.txt."""
  root = tmp_path_factory.mktemp("reid")
  lines = []
  for identity, count in enumerate(COUNTS):
    folder = f"SEQ-0{identity % 2 + 1}_{identity:06d}"
    os.makedirs(root / "imgs" / folder)
    for frame in range(count):
      name = f"{folder}/{frame + 1:06d}.png"
      Image.fromarray(_identity_image(identity, frame)).save(root / "imgs" / name)
      lines.append(f"{name} {100 + 7 * identity}")
  (root / "meta").mkdir()
  list_path = _write_list(root / "meta" / "train.txt", lines)
  return ip.read_filelist(list_path, str(root / "imgs"))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _train(data, **kwargs):
  kwargs = {"p": 4, "k": 3, "image_size": SIZE, "augment": ALL_AUGMENT, "seed": 3} | kwargs
  return ip.train_batches(data, **kwargs)


# ---- File lists ----


def test_read_filelist_parses_spaces_blank_lines_and_crlf(tmp_path):
  (tmp_path / "my dir").mkdir()
  for name in ("a.jpg", "b c.jpg"):
    (tmp_path / "my dir" / name).write_bytes(b"x")
  list_path = tmp_path / "list.txt"
  list_path.write_bytes(b"my dir/a.jpg 5\r\n\r\n   \nmy dir/b c.jpg\t 2\r\n./my dir/a.jpg 7")
  data = ip.read_filelist(str(list_path), str(tmp_path))
  assert data.paths == ("my dir/a.jpg", "my dir/b c.jpg", "my dir/a.jpg")
  assert data.labels.tolist() == [5, 2, 7] and data.labels.dtype == np.int64
  assert data.lines.tolist() == [1, 4, 5]
  assert data.num_images == 3 and data.source == str(list_path)


@pytest.mark.parametrize("content, line, message", [
    ("a/1.jpg 0\na/1.jpg\n", 2, "expected '<path> <label>'"),
    ("a/1.jpg -3\n", 1, "label -3 is negative"),
    ("a/1.jpg 1.5\n", 1, "label '1.5' is not an integer"),
    ("a/1.jpg x\n", 1, "label 'x' is not an integer"),
    ("\n/abs/a/1.jpg 0\n", 2, "is absolute"),
    ("a/../../1.jpg 0\n", 1, "points outside the image root"),
    ("a/1.jpg 0\na/2.jpg 0\n", 2, "image not found"),
    ("a/1.jpg 0\nb/1.jpg 0\n", 2, "image not found"),
    ("a 0\n", 1, "image not found"),  # A directory is not an image.
])
def test_read_filelist_errors_name_file_and_line(tmp_path, content, line, message):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "1.jpg").write_bytes(b"x")
  list_path = tmp_path / "list.txt"
  list_path.write_text(content)
  with pytest.raises(ValueError) as error:
    ip.read_filelist(str(list_path), str(tmp_path))
  assert str(error.value).startswith(f"{list_path}:{line}: ")
  assert message in str(error.value)


def test_read_filelist_empty_and_missing_list(tmp_path):
  list_path = tmp_path / "list.txt"
  list_path.write_text("\n  \n")
  with pytest.raises(ValueError, match=f"^{list_path}: no images$"):
    ip.read_filelist(str(list_path), str(tmp_path))
  missing = tmp_path / "nope.txt"
  with pytest.raises(ValueError, match=f"^{missing}: not found$"):
    ip.read_filelist(str(missing), str(tmp_path))


def test_read_filelist_check_files_off_skips_the_disk(tmp_path):
  list_path = tmp_path / "list.txt"
  list_path.write_text("x/1.jpg 4\n")
  assert ip.read_filelist(str(list_path), "/nonexistent", check_files=False).paths == ("x/1.jpg",)


def test_read_filelist_lists_each_folder_once(tmp_path, monkeypatch):
  lines = []
  for folder in range(5):
    (tmp_path / f"id{folder}").mkdir()
    for frame in range(40):
      (tmp_path / f"id{folder}" / f"{frame}.jpg").write_bytes(b"x")
      lines.append(f"id{folder}/{frame}.jpg {folder}")
  calls = []
  real_scandir = os.scandir
  monkeypatch.setattr(os, "scandir", lambda path: calls.append(path) or real_scandir(path))
  data = ip.read_filelist(_write_list(tmp_path / "list.txt", lines), str(tmp_path))
  assert data.num_images == 200 and len(calls) == 5  # Fast for 100k files: no stat per image.


def test_class_ids_contiguous_in_sorted_label_order():
  ids, count = ip.class_ids(np.array([50, 7, 50, 9, 7]))
  assert ids.tolist() == [2, 0, 2, 1, 0] and ids.dtype == np.int32 and count == 3
  assert ip.class_ids(np.array([50, 7]), 2)[1] == 2
  assert ip.class_ids(np.array([50, 7]), 0)[1] == 2
  with pytest.raises(ValueError, match="list.txt: num_classes is 380 but the list has 2 distinct"):
    ip.class_ids(np.array([50, 7]), 380, source="list.txt")


# ---- P×K sampling ----


def _identity_rows(ids):
  return {i: set(np.flatnonzero(ids == i).tolist()) for i in np.unique(ids)}


def test_pk_indices_structure_and_replacement_rule():
  ids = np.repeat(np.arange(len(COUNTS)), COUNTS)[np.random.default_rng(0).permutation(sum(COUNTS))]
  rows_of = _identity_rows(ids)
  p, k = 3, 4
  for step in range(20):
    rows = ip.pk_indices(ids, p=p, k=k, seed=1, step=step)
    assert rows.shape == (p * k,)
    groups = rows.reshape(p, k)
    identities = ids[groups[:, 0]]
    assert len(set(identities.tolist())) == p  # P distinct identities...
    for identity, group in zip(identities, groups, strict=True):
      assert set(group.tolist()) <= rows_of[identity]  # ...K consecutive rows each.
      if len(rows_of[identity]) >= k:
        assert len(set(group.tolist())) == k  # Without replacement when possible.
    np.testing.assert_array_equal(rows, ip.pk_indices(ids, p=p, k=k, seed=1, step=step))


def test_pk_indices_every_epoch_covers_every_identity():
  ids = np.repeat(np.arange(10), 2)
  p = 4
  steps = ip.steps_per_epoch(10, p)
  assert steps == 3
  orders = []
  for epoch in range(3):
    seen = [ids[ip.pk_indices(ids, p=p, k=2, seed=0, step=epoch * steps + s)[::2]]
            for s in range(steps)]
    assert set(np.concatenate(seen).tolist()) == set(range(10))
    orders.append(np.concatenate(seen)[:10].tolist())
    # The topped-up last batch repeats the epoch's first identities, not random ones.
    assert seen[-1].tolist()[2:] == seen[0].tolist()[:2]
  assert orders[0] != orders[1]  # A fresh order every epoch.


def test_pk_indices_depends_on_seed_and_repeats_identities_when_fewer_than_p():
  ids = np.repeat(np.arange(6), 4)
  a = ip.pk_indices(ids, p=3, k=2, seed=0, step=0)
  assert not np.array_equal(a, ip.pk_indices(ids, p=3, k=2, seed=1, step=0))
  # P=14 > 6 identities: every step holds all 6, the epoch order repeated cyclically.
  for step in range(3):
    slots = ids[ip.pk_indices(ids, p=14, k=2, seed=0, step=step)].reshape(14, 2)
    assert (slots[:, 0] == slots[:, 1]).all()  # K images of one identity per slot
    assert slots[:6, 0].tolist() == slots[6:12, 0].tolist() == slots[12:, 0].tolist() + \
        slots[2:6, 0].tolist()
    assert sorted(slots[:6, 0]) == list(range(6))


# ---- Training stream ----


def test_train_batches_pk_batches_with_matching_labels(dataset):
  batches = _take(_train(dataset, augment=NO_AUGMENT, seed=0), ip.steps_per_epoch(8, 4) * 2)
  seen = set()
  for batch in batches:
    assert batch["image"].shape == (12, *SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32
    groups = batch["label"].reshape(4, 3)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 4
    # Red encodes the identity: labels travel with their images, ids follow sorted raw labels.
    np.testing.assert_array_equal(batch["image"][..., 0].min(axis=(1, 2)), 30 * batch["label"] + 10)
    np.testing.assert_array_equal(batch["image"][..., 0].max(axis=(1, 2)), 30 * batch["label"] + 10)
    seen.update(batch["label"].tolist())
  assert seen == set(range(8))


def test_train_batches_deterministic_and_resumable(dataset):
  first = _take(_train(dataset), 6)
  again = _take(_train(dataset), 6)
  resumed = _take(_train(dataset, start_step=4), 2)  # Crosses the epoch boundary at step 2.
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for a, b in zip(first[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other_seed = next(_train(dataset, seed=4))
  assert not np.array_equal(first[0]["image"], other_seed["image"])


def test_train_batches_processes_reassemble_global_batch(dataset):
  global_batches = _take(_train(dataset), 3)
  shards = [_take(_train(dataset, process_index=i, process_count=2), 3) for i in range(2)]
  for step, full in enumerate(global_batches):
    for key in ("image", "label"):
      assert shards[0][step][key].shape[0] == 6
      np.testing.assert_array_equal(
          np.concatenate([shards[0][step][key], shards[1][step][key]]), full[key])
    assert not set(shards[0][step]["label"]) & set(shards[1][step]["label"])


def test_train_batches_errors(dataset):
  # P/K, process split and pad are checked once, by train.check_config (tests/test_train.py).
  with pytest.raises(ValueError, match="num_classes is 380 but the list has 8"):
    _train(dataset, num_classes=380)


# ---- Augmentations: each changes what it should and nothing else ----


def _pair(dataset, augment, steps=2, image_size=SIZE):
  """(plain, augmented) batches for the same seed and steps; same rows in the same order."""
  plain = _take(_train(dataset, augment=NO_AUGMENT, image_size=image_size), steps)
  augmented = _take(_train(dataset, augment=augment, image_size=image_size), steps)
  for a, b in zip(plain, augmented, strict=True):
    np.testing.assert_array_equal(a["label"], b["label"])
  return (np.concatenate([b["image"] for b in plain]).astype(int),
          np.concatenate([b["image"] for b in augmented]).astype(int))


def test_flip_mirrors_some_rows_and_leaves_the_rest(dataset):
  plain, flipped = _pair(dataset, ip.Augment(flip=True), steps=4)
  mirrored = [np.array_equal(f, p[:, ::-1]) for p, f in zip(plain, flipped, strict=True)]
  same = [np.array_equal(f, p) for p, f in zip(plain, flipped, strict=True)]
  assert all(m or s for m, s in zip(mirrored, same, strict=True))
  assert any(mirrored) and any(same)
  per_step = np.array(mirrored).reshape(4, 12)
  assert len({tuple(row) for row in per_step}) == 4  # Fresh randomness every step.


def _shift(image, dy, dx):
  out = np.zeros_like(image)
  h, w = image.shape[:2]
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = (
      image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)])
  return out


def test_pad_crop_shifts_content_with_zero_fill(dataset):
  pad = 2
  plain, cropped = _pair(dataset, ip.Augment(flip=False, pad=pad))
  shifts = []
  for p, c in zip(plain, cropped, strict=True):
    matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
               if np.array_equal(_shift(p, dy, dx), c)]
    assert matches, "crop is not a shifted copy of the image"
    shifts.append(matches[0])
  assert len(set(shifts)) > 3


def test_random_erasing_fills_one_rectangle_with_the_mean(dataset):
  plain, erased = _pair(dataset, ip.Augment(flip=False, erasing_prob=1.0))
  for p, e in zip(plain, erased, strict=True):
    ys, xs = np.nonzero((p != e).any(axis=-1))
    assert len(ys), "prob 1 must erase every image"
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert (e[box] == ERASE_FILL).all()  # The changed pixels form a rectangle of the mean colour.
    outside = np.ones(p.shape[:2], bool)
    outside[box] = False
    np.testing.assert_array_equal(e[outside], p[outside])
  _, half = _pair(dataset, ip.Augment(flip=False, erasing_prob=0.5))
  erased_rows = [(h == ERASE_FILL).all(axis=-1).any() for h in half]
  assert any(erased_rows) and not all(erased_rows)


@pytest.mark.parametrize("area, aspect, height, width", [(0.25, 1.0, 8, 8), (0.125, 2.0, 8, 4)])
def test_random_erasing_rectangle_size_and_aspect(dataset, area, aspect, height, width):
  augment = ip.Augment(flip=False, erasing_prob=1.0, erasing_area=(area, area),
                       erasing_aspect=(aspect, aspect))
  plain, erased = _pair(dataset, augment, image_size=(16, 16))
  corners = set()
  for p, e in zip(plain, erased, strict=True):
    ys, xs = np.nonzero((p != e).any(axis=-1))
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (height, width)
    assert len(ys) == height * width
    corners.add((ys.min(), xs.min()))
  assert len(corners) > 3


@pytest.mark.parametrize("kwargs, message", [
    ({"pad": -1}, "pad and color_jitter must be >= 0"),
    ({"erasing_prob": 1.5}, "erasing_prob must be in"),
    ({"erasing_area": (0.5, 0.1)}, "erasing_area"),
    ({"erasing_aspect": (0.0, 2.0)}, "erasing_aspect"),
])
def test_augment_rejects_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ip.Augment(**kwargs)


def test_color_jitter_changes_values_not_geometry(dataset):
  plain, jittered = _pair(dataset, ip.Augment(flip=False, color_jitter=0.4))
  assert (plain != jittered).any(axis=(1, 2, 3)).all()
  for p, j in zip(plain, jittered, strict=True):
    # A colour transform: each output pixel is a function of the input pixel's colour alone.
    colours, inverse = np.unique(p.reshape(-1, 3), axis=0, return_inverse=True)
    outputs = j.reshape(-1, 3)
    for c in range(len(colours)):
      assert (outputs[inverse.reshape(-1) == c] == outputs[inverse.reshape(-1) == c][0]).all()


# ---- Pixels ----


def _single_image_list(tmp_path, image: Image.Image, name="x/000001.png"):
  (tmp_path / "x").mkdir(exist_ok=True)
  image.save(tmp_path / name)
  return ip.read_filelist(_write_list(tmp_path / "list.txt", [f"{name} 0"]), str(tmp_path))


def _eval_image(data, size=SIZE):
  return next(ip.eval_batches(data, batch_size=1, image_size=size))["image"][0].astype(int)


def test_decode_resize_known_values(tmp_path):
  solid = Image.new("RGB", (20, 40), (10, 200, 30))
  assert (_eval_image(_single_image_list(tmp_path, solid)) == (10, 200, 30)).all()
  # 16 -> 8 columns: bilinear with half-pixel centres, no antialias, averages pixel pairs.
  gradient = np.zeros((16, 16, 3), np.uint8)
  gradient[..., 1] = np.arange(16)[None, :] * 16
  out = _eval_image(_single_image_list(tmp_path, Image.fromarray(gradient), "x/g.png"))
  np.testing.assert_array_equal(out[..., 1], np.broadcast_to(np.arange(8) * 32 + 8, (16, 8)))
  assert (out[..., [0, 2]] == 0).all()
  # Halfway values round to nearest (half up), not down: mean(10, 13) = 11.5 -> 12.
  pair = np.zeros((16, 2, 3), np.uint8)
  pair[:, 1] = 3
  pair[..., 0] += 10
  out = _eval_image(_single_image_list(tmp_path, Image.fromarray(pair), "x/p.png"), (16, 1))
  assert (out == (12, 2, 2)).all()


def test_grayscale_and_rgba_become_rgb(tmp_path):
  gray = _eval_image(_single_image_list(tmp_path, Image.new("L", (8, 16), 77), "x/l.png"))
  assert (gray == 77).all()
  rgba = Image.new("RGBA", (8, 16), (1, 2, 3, 40))
  assert (_eval_image(_single_image_list(tmp_path, rgba, "x/a.png")) == (1, 2, 3)).all()


def test_jpeg_decodes_like_pil(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (37, 23, 3), np.uint8)
  data = _single_image_list(tmp_path, Image.fromarray(noise), "x/n.jpg")
  expected = np.asarray(Image.open(tmp_path / "x" / "n.jpg").convert("RGB"))
  np.testing.assert_array_equal(_eval_image(data, (37, 23)), expected)


def test_red_stays_red_through_training_stream(tmp_path):
  (tmp_path / "x").mkdir()
  names = [f"x/{i}.jpg" for i in range(3)]
  for name in names:
    Image.new("RGB", (12, 24), (255, 0, 0)).save(tmp_path / name)
  list_path = _write_list(tmp_path / "l.txt", [f"{n} {i}" for i, n in enumerate(names)])
  data = ip.read_filelist(list_path, str(tmp_path))
  image = next(ip.train_batches(data, p=3, k=2, image_size=SIZE, augment=ip.Augment(), seed=0))
  image = image["image"].astype(int)
  assert (image[..., 0] >= 250).all() and (image[..., 1:] <= 5).all()
  normalized = np.asarray(models.normalize_images(jnp.asarray(image.astype(np.uint8))))
  assert (normalized[..., 0] > 2.0).all() and (normalized[..., 1:] < -1.7).all()


# ---- Evaluation stream ----


@pytest.mark.parametrize("batch_size, process_count", [(1, 1), (4, 2), (7, 1), (32, 1), (32, 4),
                                                       (64, 2)])
def test_eval_batches_cover_every_image_once(dataset, batch_size, process_count):
  n = dataset.num_images  # 32
  streams = [list(ip.eval_batches(dataset, batch_size=batch_size, image_size=SIZE,
                                  process_index=i, process_count=process_count))
             for i in range(process_count)]
  num_batches = ip.num_eval_batches(n, batch_size)
  assert all(len(s) == num_batches for s in streams)
  global_batches = [{key: np.concatenate([s[b][key] for s in streams]) for key in streams[0][b]}
                    for b in range(num_batches)]
  merged = {key: np.concatenate([b[key] for b in global_batches]) for key in global_batches[0]}
  assert all(len(b["index"]) == batch_size for b in global_batches)
  mask = merged["mask"]
  np.testing.assert_array_equal(mask, np.arange(num_batches * batch_size) < n)
  np.testing.assert_array_equal(merged["index"][mask], np.arange(n))
  np.testing.assert_array_equal(merged["label"][mask], dataset.labels)
  assert (merged["index"][~mask] == -1).all() and (merged["label"][~mask] == -1).all()
  assert (merged["image"][~mask] == 0).all()
  identity = (merged["label"][mask] - 100) // 7
  np.testing.assert_array_equal(merged["image"][mask][:, 0, -1, 0], 30 * identity + 10)


# ---- Device side ----


def test_prefetch_to_mesh_values_and_sharding():
  assert len(jax.devices()) == 4
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
  host = [{"image": np.full((8, 2, 2, 3), i, np.uint8), "label": np.arange(8, dtype=np.int32) + i}
          for i in range(5)]
  out = list(ip.prefetch_to_mesh(iter(host), sharding, size=2))
  assert len(out) == 5
  for h, d in zip(host, out, strict=True):
    for key in h:
      assert isinstance(d[key], jax.Array) and d[key].sharding == sharding
      np.testing.assert_array_equal(np.asarray(d[key]), h[key])
      assert [s.data.shape[0] for s in d[key].addressable_shards] == [2, 2, 2, 2]
