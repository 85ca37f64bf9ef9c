"""Tests for evaluate.py's command line, the tracker Embedder and the ranked-list picture."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

import checkpoints
import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC_KEYS = ('mAP', 'R1', 'R5', 'R10', 'R20', 'mINP', 'num_queries', 'num_skipped',
               'num_gallery')

# ---- Fixtures and helpers ----


@pytest.fixture(scope='module')
def workdir(tiny_workdir):
  """The session's tiny trained workdir (tests/conftest.py)."""
  return tiny_workdir


@pytest.fixture(scope='module')
def features(workdir, tmp_path_factory):
  """The val list's embed-mode output (via the flags, as a user runs it), loaded."""
  path = str(tmp_path_factory.mktemp('features') / 'feats.npz')
  assert run_flags(workdir, '--mode=embed', '--checkpoint=latest', f'--output={path}') == (
      f'wrote {path}')
  with np.load(path) as f:
    return {k: f[k] for k in f}


def run_flags(workdir: str, *args: str) -> str:
  """Parses the flags as evaluate.py's command line does and runs that mode."""
  flag_values = flags.FlagValues()
  evaluate.define_flags(flag_values)
  flag_values(['evaluate.py', f'--workdir={workdir}', *args])
  return evaluate.run(flag_values)


def val_list(workdir: str) -> str:
  config = checkpoints.load_config(workdir)
  return os.path.join(config.data.root, config.data.val_list)


def write_list(path, lines) -> str:
  path.write_text(''.join(f'{line}\n' for line in lines))
  return str(path)


def val_lines(workdir: str) -> list[dict]:
  lines = open(os.path.join(workdir, 'metrics.jsonl')).read().splitlines()
  return [x for x in map(json.loads, lines) if x['split'] == 'val']


def numpy_ap(x_query, query_labels, x_gallery, gallery_labels, query_cams=None, gallery_cams=None,
             exclude_self=False) -> np.ndarray:
  """Per-query AP by brute force (NaN for queries without a positive)."""
  aps = []
  for q in range(len(x_query)):
    keep = np.ones(len(x_gallery), bool)
    if exclude_self:
      keep[q] = False
    if query_cams is not None:
      keep &= ~((gallery_labels == query_labels[q]) & (gallery_cams == query_cams[q]))
    d2 = ((x_gallery[keep].astype(np.float64) - x_query[q]) ** 2).sum(1)
    hits = (gallery_labels[keep] == query_labels[q])[np.argsort(d2, kind='stable')]
    if not hits.any():
      aps.append(np.nan)
      continue
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    aps.append((precision * hits).sum() / hits.sum())
  return np.asarray(aps)


def read_rgb(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert('RGB'))


# ---- Evaluate ----


def test_cli_metrics_equal_the_in_training_evaluation(workdir):
  last = val_lines(workdir)[-1]
  assert last['step'] == 10
  plain = evaluate.evaluate_checkpoint(workdir, 'latest')
  gap = evaluate.evaluate_checkpoint(workdir, 'latest', protocol='frame_gap')  # config's gap: 30
  assert plain['step'] == gap['step'] == 10 and gap['frame_gap'] == 30
  for key in METRIC_KEYS:
    assert plain['metrics'][key] == pytest.approx(last[key], abs=1e-6), key
    assert gap['metrics'][key] == pytest.approx(last[f'gap_{key}'], abs=1e-6), key
  assert gap['metrics']['num_skipped'] > 0  # same-track neighbours really were ignored

  # The JSON in the workdir holds what was returned, named after list (+ a hash of the absolute
  # list and image root), step and protocol.
  name = os.path.basename(plain['output'])
  assert re.fullmatch(r'eval_val_20_[0-9a-f]{6}_step10\.json', name), name
  assert os.path.dirname(plain['output']) == workdir
  assert gap['output'] == os.path.join(workdir, name.replace('.json', '_gap30.json'))
  with open(gap['output']) as f:
    assert json.load(f) == json.loads(json.dumps(gap))
  table = evaluate.format_table(plain)
  assert f"{100 * last['mAP']:.2f}" in table and f"{100 * last['R1']:.2f}" in table
  assert 'all-vs-all' in table and gap['output'] not in table

  # 'best' is the evaluated step with the highest val mAP.
  best_step = max(val_lines(workdir), key=lambda x: x['mAP'])['step']
  _, _, _, step = checkpoints.load_checkpoint(workdir, 'best')
  assert step == best_step


def test_query_gallery_mode_applies_the_market_camera_filter(workdir, features, tmp_path):
  # Market-style copy of part of the val list: 0001_c1s1_000003_00.jpg, alternating cameras.
  labels, paths = features['labels'], features['paths']
  chosen = np.concatenate([np.flatnonzero(labels == label)[:6] for label in np.unique(labels)[:8]])
  image_root = tmp_path / 'market'
  image_root.mkdir()
  cams, names = 1 + np.arange(len(chosen)) % 2, []
  for i, (row, cam) in enumerate(zip(chosen, cams, strict=True)):
    names.append(f'{labels[row]:04d}_c{cam}s1_{i:06d}_00.jpg')
    shutil.copy(os.path.join(str(features['image_root']), paths[row]), image_root / names[-1])
  is_query = np.zeros(len(chosen), bool)
  is_query[np.unique(labels[chosen], return_index=True)[1]] = True  # first image per identity
  query_list = write_list(tmp_path / 'query.txt', [
      f'{n} {labels[r]}' for n, r, q in zip(names, chosen, is_query, strict=True) if q])
  gallery_list = write_list(tmp_path / 'gallery.txt', [
      f'{n} {labels[r]}' for n, r, q in zip(names, chosen, is_query, strict=True) if not q])

  result = evaluate.evaluate_checkpoint(workdir, 'latest', query_list=query_list,
                                        gallery_list=gallery_list, image_root=str(image_root))
  x = features['embeddings'][chosen]
  expected = numpy_ap(x[is_query], labels[chosen][is_query], x[~is_query],
                      labels[chosen][~is_query], cams[is_query], cams[~is_query])
  unfiltered = numpy_ap(x[is_query], labels[chosen][is_query], x[~is_query],
                        labels[chosen][~is_query])
  assert abs(np.nanmean(expected) - np.nanmean(unfiltered)) > 1e-3  # the filter matters here
  assert result['camera_filter'] is True
  assert result['metrics']['mAP'] == pytest.approx(np.nanmean(expected), abs=1e-5)
  assert result['metrics']['num_queries'] == np.isfinite(expected).sum() == 8
  assert re.fullmatch(r'eval_query_vs_gallery_[0-9a-f]{6}_step10\.json',
                      os.path.basename(result['output'])), result['output']

  # One name without a camera id turns the filter off, and the output says so.
  os.rename(image_root / names[-1], image_root / 'no_camera.jpg')
  text = (tmp_path / 'gallery.txt').read_text().replace(names[-1], 'no_camera.jpg')
  (tmp_path / 'gallery.txt').write_text(text)
  result = evaluate.evaluate_checkpoint(workdir, 'latest', query_list=query_list,
                                        gallery_list=gallery_list, image_root=str(image_root))
  assert result['camera_filter'] is False
  assert result['metrics']['mAP'] == pytest.approx(np.nanmean(unfiltered), abs=1e-5)
  assert 'camera filter off: no_camera.jpg' in evaluate.format_table(result)


# ---- Embeddings and the tracker API ----


def test_embed_file_contents_and_no_silent_overwrite(workdir, features, tmp_path):
  with open(val_list(workdir)) as f:
    rows = [line.split() for line in f if line.strip()]
  n = len(rows)
  assert features['embeddings'].shape == (n, 64) and features['embeddings'].dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(features['embeddings'], axis=1), 1.0, atol=1e-5)
  assert features['paths'].tolist() == [path for path, _ in rows]
  assert features['labels'].tolist() == [int(label) for _, label in rows]
  assert int(features['step']) == 10
  assert json.loads(str(features['config']))['model']['width'] == 8
  # Different identities really are embedded differently (the model is not constant).
  assert np.abs(features['embeddings'][0] - features['embeddings'][-1]).max() > 1e-2

  path = tmp_path / 'feats.npz'
  path.write_bytes(b'precious')
  with pytest.raises(ValueError, match=r'feats.npz: already exists \(pass --overwrite'):
    run_flags(workdir, '--mode=embed', f'--output={path}')
  assert path.read_bytes() == b'precious'


def test_embedder_on_odd_sized_crops_matches_embed_mode(workdir, features):
  embedder = evaluate.Embedder.from_workdir(workdir, 'latest', batch_sizes=(8, 32))
  root = str(features['image_root'])
  rows = np.arange(0, len(features['paths']), 7)[:40]
  crops = [read_rgb(os.path.join(root, features['paths'][i])) for i in rows]
  assert {c.shape[:2] for c in crops} - {(32, 16)}, 'crops should need resizing'
  out = embedder(crops)
  assert out.shape == (len(rows), 64) and out.dtype == np.float32
  np.testing.assert_allclose(out, features['embeddings'][rows], atol=1e-4)

  # An already resized NHWC batch, a grey crop and an RGBA crop are accepted as the pipeline does.
  batch = np.stack([evaluate.resize_crop(c, (32, 16)) for c in crops[:3]])
  np.testing.assert_allclose(embedder(batch), out[:3], atol=1e-6)
  grey = crops[0][:, :, 1]
  rgba = np.concatenate([crops[1], np.full((*crops[1].shape[:2], 1), 7, np.uint8)], axis=2)
  mixed = embedder([grey, rgba])
  np.testing.assert_allclose(mixed[0], embedder([np.repeat(grey[:, :, None], 3, 2)])[0],
                             atol=1e-6)
  np.testing.assert_allclose(mixed[1], out[1], atol=1e-6)

  # Many calls of different lengths compile at most once per padded batch size.
  for n in (1, 2, 5, 9, 31, 33, 40):
    np.testing.assert_allclose(embedder(crops[:n]), out[:n], atol=1e-5)
  assert embedder._forward._cache_size() == 2  # batches of 8 and 32 only
  assert embedder([]).shape == (0, 64)
  with pytest.raises(ValueError, match='crop 1: expected uint8'):
    embedder([crops[0], crops[1].astype(np.float32)])
  with pytest.raises(ValueError, match=r'crop 0: expected a non-empty HxWx3'):
    embedder([np.zeros((0, 5, 3), np.uint8)])


def test_flip_tta_differs_from_plain_but_stays_close(workdir, features, tmp_path):
  path = str(tmp_path / 'flip.npz')
  run_flags(workdir, '--mode=embed', '--checkpoint=latest', '--flip_tta', f'--output={path}')
  with np.load(path) as f:
    flipped, flag = f['embeddings'], bool(f['flip_tta'])
  plain = features['embeddings']
  assert flag
  np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-5)
  assert np.abs(flipped - plain).max() > 1e-3
  cosine = np.sum(flipped * plain, axis=1)
  assert cosine.mean() > 0.9 and cosine.min() > 0.5

  # The flip average cannot tell an image from its mirror; the plain embedding can.
  embedder = evaluate.Embedder.from_workdir(workdir, 'latest', flip_tta=True, batch_sizes=(8,))
  crops = [read_rgb(os.path.join(str(features['image_root']), p)) for p in features['paths'][:4]]
  mirrored = [c[:, ::-1] for c in crops]
  np.testing.assert_allclose(embedder(mirrored), embedder(crops), atol=1e-5)
  np.testing.assert_allclose(embedder(crops), flipped[:4], atol=1e-4)
  plain_embedder = evaluate.Embedder.from_workdir(workdir, 'latest', batch_sizes=(8,))
  assert np.abs(plain_embedder(mirrored) - plain_embedder(crops)).max() > 1e-3


def test_grey_and_rgba_images_are_read_as_rgb(workdir, features, tmp_path):
  rgb = read_rgb(os.path.join(str(features['image_root']), features['paths'][0]))
  grey = rgb[:, :, 0]
  folder = tmp_path / 'imgs' / 'X_000001'
  folder.mkdir(parents=True)
  Image.fromarray(grey, 'L').save(folder / '000001.png')
  Image.fromarray(np.repeat(grey[:, :, None], 3, 2), 'RGB').save(folder / '000002.png')
  rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 40, np.uint8)], axis=2)
  Image.fromarray(rgba, 'RGBA').save(folder / '000003.png')
  Image.fromarray(rgb, 'RGB').save(folder / '000004.png')
  list_path = write_list(tmp_path / 'modes.txt', [f'X_000001/00000{i}.png 0' for i in range(1, 5)])
  out = str(tmp_path / 'modes.npz')
  run_flags(workdir, '--mode=embed', '--checkpoint=latest', f'--list={list_path}',
            f'--image_root={tmp_path / "imgs"}', f'--output={out}')
  with np.load(out) as f:
    x = f['embeddings']
  np.testing.assert_allclose(x[0], x[1], atol=1e-6)  # grey == grey replicated to RGB
  np.testing.assert_allclose(x[2], x[3], atol=1e-6)  # RGBA == its RGB
  np.testing.assert_allclose(x[3], features['embeddings'][0], atol=1e-4)


# ---- Ranked-list picture ----


def test_picture_size_and_border_colours_follow_the_labels(workdir, features, tmp_path):
  path = str(tmp_path / 'ranks.png')
  text = run_flags(workdir, '--mode=visualize', '--checkpoint=latest', '--num_queries=3',
                   '--top_k=4', '--seed=1', f'--output={path}')
  assert text.startswith(f'wrote {path} (3 queries')
  drawn = evaluate.visualize_checkpoint(workdir, 'latest', num_queries=3, top_k=4, seed=1,
                                        output=str(tmp_path / 'again.png'))
  assert (tmp_path / 'again.png').read_bytes() == open(path, 'rb').read()  # reproducible

  # Crops are drawn 128 high at the model's 32x16 aspect: 64 wide, plus borders and caption.
  cell_w = 64 + 2 * evaluate.BORDER
  cell_h = 128 + 2 * evaluate.BORDER + evaluate.CAPTION_HEIGHT
  gap, pad = evaluate.QUERY_GAP, evaluate.SPACING
  picture = read_rgb(path)
  assert picture.shape == (pad + 3 * (cell_h + pad), pad + 5 * (cell_w + pad) + gap, 3)

  x, labels = features['embeddings'], features['labels']
  for row, query in enumerate(drawn['queries']):
    d2 = ((x - x[query]) ** 2).sum(1)
    d2[query] = np.inf
    ranked = np.argsort(d2, kind='stable')[:4]
    assert drawn['ranked'][row].tolist() == ranked.tolist()
    y = pad + row * (cell_h + pad) + 1
    assert tuple(picture[y, pad + 1]) == evaluate.QUERY_COLOR
    for column, index in enumerate(ranked, start=1):
      colour = evaluate.GREEN if labels[index] == labels[query] else evaluate.RED
      x0 = pad + column * (cell_w + pad) + gap
      assert tuple(picture[y, x0 + 1]) == colour, (row, column)
      assert tuple(picture[y + 60, x0 + cell_w - 2]) == colour, (row, column)
  assert len({tuple(r) for r in drawn['ranked']}) == 3
  other = evaluate.visualize_checkpoint(workdir, 'latest', num_queries=3, top_k=4, seed=2,
                                        output=str(tmp_path / 'other.png'))
  assert other['queries'].tolist() != drawn['queries'].tolist()


def test_worst_mode_picks_the_lowest_ap_queries(workdir, features, tmp_path):
  drawn = evaluate.visualize_checkpoint(workdir, 'latest', num_queries=5, top_k=3, worst=True,
                                        output=str(tmp_path / 'worst.png'))
  x, labels = features['embeddings'], features['labels']
  ap = numpy_ap(x, labels, x, labels, exclude_self=True)
  lowest = np.argsort(np.where(np.isnan(ap), np.inf, ap), kind='stable')[:5]
  assert drawn['queries'].tolist() == lowest.tolist()
  np.testing.assert_allclose(drawn['ap'], ap[lowest], atol=1e-5)
  assert ap[lowest].max() < np.nanmean(ap)


# ---- Bad input ----


def test_bad_input_is_a_one_line_error_naming_the_file(workdir, features, tmp_path):
  def error(call, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
      call(*args, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    return message

  missing = str(tmp_path / 'missing')
  assert error(evaluate.evaluate_checkpoint, missing) == f'{missing}: no such directory'
  empty_dir = tmp_path / 'empty_workdir'
  empty_dir.mkdir()
  assert 'config.json: not found' in error(evaluate.evaluate_checkpoint, str(empty_dir))
  shutil.copy(os.path.join(workdir, 'config.json'), empty_dir / 'config.json')
  assert 'checkpoints: no checkpoints' in error(evaluate.evaluate_checkpoint, str(empty_dir))
  assert "no checkpoint '7' (have best, latest, 5, 10)" in error(
      evaluate.evaluate_checkpoint, workdir, '7')
  assert "no checkpoint 'newest'" in error(run_flags, workdir, '--checkpoint=newest')

  absent_list = str(tmp_path / 'absent.txt')
  assert error(run_flags, workdir, f'--list={absent_list}') == f'{absent_list}: not found'
  empty_list = write_list(tmp_path / 'empty.txt', [])
  assert error(run_flags, workdir, f'--list={empty_list}') == f'{empty_list}: no images'
  bad_label = write_list(tmp_path / 'bad_label.txt', [f'{features["paths"][0]} x'])
  assert error(run_flags, workdir, f'--list={bad_label}').startswith(f'{bad_label}:1: label')

  # An image that cannot be decoded is named with its list line.
  folder = tmp_path / 'imgs' / 'X_000001'
  folder.mkdir(parents=True)
  shutil.copy(os.path.join(str(features['image_root']), features['paths'][0]),
              folder / '000001.jpg')
  (folder / '000002.jpg').write_bytes(b'not a jpeg')
  (folder / 'frame_a.jpg').write_bytes((folder / '000001.jpg').read_bytes())
  broken = write_list(tmp_path / 'broken.txt', ['X_000001/000001.jpg 0', 'X_000001/000002.jpg 0'])
  image_root = f'--image_root={tmp_path / "imgs"}'
  assert error(run_flags, workdir, f'--list={broken}', image_root).startswith(
      f'{broken}:2: cannot read image {folder / "000002.jpg"}')
  no_frame = write_list(tmp_path / 'no_frame.txt', ['X_000001/000001.jpg 0',
                                                    'X_000001/frame_a.jpg 0'])
  assert error(run_flags, workdir, f'--list={no_frame}', image_root,
               '--protocol=frame_gap').startswith(f'{no_frame}:2: --protocol=frame_gap needs')

  assert 'go together' in error(run_flags, workdir, f'--query_list={no_frame}')
  assert 'not both' in error(run_flags, workdir, f'--list={no_frame}', f'--query_list={no_frame}',
                             f'--gallery_list={no_frame}')
  assert 'are for --mode=eval' in error(run_flags, workdir, '--mode=embed',
                                        f'--query_list={no_frame}', f'--gallery_list={no_frame}')
  assert "folder" in error(run_flags, workdir, '--mode=visualize',
                           f'--output={tmp_path / "no" / "ranks.png"}')
  assert error(run_flags, '') == '--workdir is required'
  assert error(run_flags, workdir, '--frame_gap=-1') == '--frame_gap must be >= 0, got -1'
  assert '--top_k must be >= 1' in error(run_flags, workdir, '--mode=visualize', '--top_k=0')
  assert '--num_queries and --top_k must be >= 1' in error(run_flags, workdir, '--mode=visualize',
                                                          '--num_queries=0')
  assert error(run_flags, workdir, '--mode=embed', '--protocol=frame_gap') == (
      '--protocol/--frame_gap are for --mode=eval, not embed')
  assert error(run_flags, workdir, '--mode=visualize', '--frame_gap=5') == (
      '--protocol/--frame_gap are for --mode=eval, not visualize')


def test_command_line_exit_codes_and_messages(workdir, tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')

  def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)

  ok = run(f'--workdir={workdir}', '--checkpoint=5')
  assert ok.returncode == 0, ok.stderr
  first = [x for x in val_lines(workdir) if x['step'] == 5][0]
  assert f"{100 * first['mAP']:.2f}" in ok.stdout
  written = re.search(r'wrote (\S*/eval_val_20_[0-9a-f]{6}_step5\.json)$', ok.stdout.strip())
  assert written and os.path.exists(written.group(1)), ok.stdout

  missing = run(f'--workdir={workdir}', '--checkpoint=3')
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1].startswith('error: ')
  assert "no checkpoint '3'" in missing.stderr and 'Traceback' not in missing.stderr

  # Bad flag values, whether absl or evaluate.py rejects them, are one line too.
  for args, message in [(['--frame_gap=-1'], 'error: --frame_gap must be >= 0, got -1'),
                        (['--top_k=x'], "error: flag --top_k=x: invalid literal for int()"),
                        (['--protocol=x'], 'error: flag --protocol=x: value should be one of')]:
    bad = run(f'--workdir={workdir}', *args)
    assert bad.returncode == 1 and bad.stderr.strip().startswith(message), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_same_named_lists_in_other_folders_do_not_overwrite_each_other(workdir, tmp_path):
  with open(val_list(workdir)) as f:
    lines = [line.strip() for line in f if line.strip()]
  paths = []
  for folder, rows in [('a', lines[:40]), ('b', lines[-30:])]:
    (tmp_path / folder).mkdir()
    paths.append(write_list(tmp_path / folder / 'val_20.txt', rows))
  first, second = (evaluate.evaluate_checkpoint(workdir, 'latest', list_path=p) for p in paths)
  assert first['output'] != second['output']
  for result, size in [(first, 40), (second, 30)]:
    assert re.fullmatch(r'eval_val_20_[0-9a-f]{6}_step10\.json', os.path.basename(result['output']))
    with open(result['output']) as f:
      written = json.load(f)
    assert written['list'] == result['list'] and written['metrics']['num_gallery'] == size

  # The same list gives the same name (relative or absolute), another image root another one.
  again = evaluate.evaluate_checkpoint(workdir, 'latest',
                                       list_path=os.path.relpath(paths[0]))
  assert again['output'] == first['output']
  (tmp_path / 'root').symlink_to(first['image_root'])
  other_root = evaluate.evaluate_checkpoint(workdir, 'latest', list_path=paths[0],
                                            image_root=str(tmp_path / 'root'))
  assert other_root['output'] not in (first['output'], second['output'])
  assert other_root['metrics'] == first['metrics']
