"""Tests for configs/: every shipped config, as shipped, builds its schedule on real data sizes."""

import glob
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.splitext(os.path.basename(p))[0]
                 for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                 if not p.endswith('__init__.py'))

# name: (training identities, training images)
DATASETS = {'mot17_train80': (380, 25_000), 'custom': (50, 2_000),
            'market1501': (751, 12_936), 'msmt17': (1_041, 32_621)}

# (config, dataset): (steps per epoch, total steps), worked out by hand from each config's epoch.
EXPECTED = {
    # 'mmdet' epoch, 256 images a step: ceil(images * 32 / 256); 6 epochs.
    **{(name, data): (math.ceil(images / 8), 6 * math.ceil(images / 8))
       for name in ('default', 'custom_filelist', 'mot17')
       for data, (_, images) in DATASETS.items()},
    # BoT: 'images' epoch, 64 a step; 120 epochs.
    **{(name, data): (math.ceil(images / 64), 120 * math.ceil(images / 64))
       for name in ('mot17_bot', 'market1501_bot')
       for data, (_, images) in DATASETS.items()},
    # The demo: 'identities' epoch, P = 16; 80 epochs.
    **{('synthetic', data): (math.ceil(ids / 16), 80 * math.ceil(ids / 16))
       for data, (ids, _) in DATASETS.items()},
}


def load(name: str):
  return importlib.import_module(f'configs.{name}').get_config()


def test_every_config_is_in_the_table():
  assert {name for name, _ in EXPECTED} == set(CONFIGS)


@pytest.mark.parametrize('dataset', sorted(DATASETS))
@pytest.mark.parametrize('name', CONFIGS)
def test_shipped_config_builds_its_schedule(name, dataset):
  config = load(name)
  ids, images = DATASETS[dataset]
  epoch_steps = train.steps_per_epoch(config, ids, images)
  total = config.num_train_steps or math.ceil(config.num_epochs * epoch_steps)
  assert (epoch_steps, total) == EXPECTED[name, dataset]
  train.check_config(config)
  train.check_run(config, ids, epoch_steps, total)  # no decay inside the warmup, no empty run
  schedule = train.create_learning_rate_schedule(config, epoch_steps, total)
  lr = np.array([float(schedule(s)) for s in range(0, total, max(1, total // 2000))])
  peak = config.optimizer.lr
  warmup = train.warmup_steps(config, epoch_steps)
  assert 0 < warmup < total
  np.testing.assert_allclose(lr[0], peak * config.schedule.warmup_factor, rtol=1e-4)
  np.testing.assert_allclose(lr.max(), peak, rtol=1e-4)  # the warmup reaches the peak ...
  np.testing.assert_allclose(float(schedule(warmup)), peak, rtol=1e-4)
  assert float(schedule(total - 1)) < 0.2 * peak  # ... and the run ends decayed
  if config.schedule.name == 'multistep':
    first = round(min(config.schedule.decay_epochs) * epoch_steps)
    np.testing.assert_allclose(float(schedule(first - 1)), peak, rtol=1e-4)
    np.testing.assert_allclose(float(schedule(first)), peak * config.schedule.decay_factor,
                               rtol=1e-4)


@pytest.mark.parametrize('name', ['default', 'custom_filelist', 'mot17'])
def test_mmdet_style_configs_train_as_long_as_mmdet_on_mot17(name):
  ids, images = DATASETS['mot17_train80']
  config = load(name)
  epoch_steps = train.steps_per_epoch(config, ids, images)
  mmdet_iterations = 6 * images / 8  # 6 epochs x len(train_80) / 8 GPUs, 256 images each
  assert config.batch_size == 256
  assert abs(6 * epoch_steps - mmdet_iterations) <= 0.01 * mmdet_iterations
  # MMDet's 1000-iteration warmup: mot17 literally, default and custom_filelist in epochs.
  assert abs(train.warmup_steps(config, epoch_steps) - 1000) <= 10


@pytest.mark.parametrize('name', ['mot17_bot', 'market1501_bot'])
def test_bot_configs_do_what_bots_code_does(name):
  config = load(name)
  assert config.optimizer.decay_bn_and_bias  # BoT decays biases too (WEIGHT_DECAY_BIAS 5e-4)
  assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == (
      'adam', 3.5e-4, 5e-4)
  assert (config.schedule.warmup_epochs, config.schedule.warmup_factor) == (10.0, 0.01)
  assert tuple(config.schedule.decay_epochs) == (40.0, 70.0) and config.num_epochs == 120
  assert (config.batch_size, config.data.k, config.model.last_stride) == (64, 4, 1)
  assert (config.model.head, config.loss.label_smoothing) == ('bnneck', 0.1)
  assert (config.data.augment.pad, config.data.augment.erasing_prob) == (10, 0.5)


def test_decay_inside_the_warmup_is_refused_naming_the_keys():
  config = load('mot17')  # 1000 literal warmup steps
  epoch_steps = train.steps_per_epoch(config, 50, 1_000)  # 125 steps: decay at 625
  with pytest.raises(ValueError, match=r'config.schedule.decay_epochs.*inside the 1000-step '
                                       r'warmup.*config.schedule.warmup_steps'):
    train.check_run(config, 50, epoch_steps, 6 * epoch_steps)
  config.num_epochs = 0.0
  with pytest.raises(ValueError, match='0 steps.*config.num_epochs'):
    train.check_run(config, 50, epoch_steps, 0)


# ---- The README's custom-dataset path, from the command line ----


@pytest.fixture(scope='module')
def filelist_root(tmp_path_factory):
  """data/Filelist layout from the synthetic renderer: imgs/, meta/train.txt and meta/val.txt.

  72 training identities (P = 64 fits without repeats) with labels that are not 0..K-1.
  """
  import convert_mot17
  import synthetic_mot

  base = tmp_path_factory.mktemp('filelist')
  synthetic_mot.render_dataset(str(base / 'MOT'), seed=1, num_sequences=3, num_frames=24,
                               num_people=30, width=320, height=180, num_workers=2)
  convert_mot17.convert(str(base / 'MOT'), str(base / 'reid'), val_split=0.2, num_workers=2)
  root = base / 'Filelist'
  shutil.copytree(base / 'reid' / 'imgs', root / 'imgs')
  (root / 'meta').mkdir()
  for source, target in (('train_80.txt', 'train.txt'), ('val_20.txt', 'val.txt')):
    lines = (base / 'reid' / 'meta' / source).read_text().splitlines()
    relabelled = [f'{path} {int(label) * 7 + 1000}' for path, label in (x.split() for x in lines)]
    (root / 'meta' / target).write_text('\n'.join(relabelled) + '\n')
  return root


def test_custom_filelist_trains_evaluates_and_checkpoints(tmp_path, filelist_root):
  workdir = tmp_path / 'custom'
  overrides = {'data.root': filelist_root, 'model.depth': 18, 'model.width': 8,
               'data.image_size': '(32,16)', 'num_train_steps': 2}
  cmd = [sys.executable, 'train.py', '--config=configs/custom_filelist.py', f'--workdir={workdir}',
         *(f'--config.{k}={v}' for k, v in overrides.items())]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'final val mAP' in proc.stdout
  assert 'identities; 2 steps of 256 images' in proc.stderr
  assert os.listdir(workdir / 'checkpoints') == ['2']
  metrics_lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert '"split": "val"' in metrics_lines[-1]


# ---- BoT on Market-1501: convert, train with query/gallery evaluation, evaluate ----


@pytest.fixture(scope='module')
def market_folder(tmp_path_factory):
  """A Market-1501-layout folder made from synthetic crops, the person and camera in every name.

  Training persons come from the converted train list, query/gallery persons (numbered from 101)
  from the val list; the camera alternates every 5 frames (two cameras), and each person's first
  camera-1 image is its query.
  """
  import convert_mot17
  import synthetic_mot

  base = tmp_path_factory.mktemp('market')
  synthetic_mot.render_dataset(str(base / 'MOT'), seed=2, num_sequences=2, num_frames=40,
                               num_people=10, width=320, height=180, num_workers=2)
  convert_mot17.convert(str(base / 'MOT'), str(base / 'reid'), val_split=0.2, num_workers=2)
  market = base / 'Market-1501-v15.09.15'
  for folder in ('bounding_box_train', 'query', 'bounding_box_test'):
    (market / folder).mkdir(parents=True)
  for split, folder, first in (('train_80', 'bounding_box_train', 1),
                               ('val_20', 'bounding_box_test', 101)):
    queried = set()
    for line in (base / 'reid' / 'meta' / f'{split}.txt').read_text().splitlines():
      path, label = line.split()
      frame = int(os.path.splitext(os.path.basename(path))[0])
      person, camera = int(label) + first, 1 + (frame // 5) % 2
      target = folder
      if folder == 'bounding_box_test' and camera == 1 and person not in queried:
        queried.add(person)
        target = 'query'
      shutil.copy(base / 'reid' / 'imgs' / path,
                  market / target / f'{person:04d}_c{camera}s1_{frame:06d}_00.jpg')
  return market


def test_market1501_bot_scores_query_gallery_as_evaluate_does(tmp_path, market_folder):
  from test_evaluate_cli import numpy_ap, run_flags

  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  convert = subprocess.run([sys.executable, 'convert_market1501.py',
                            f'--input_dir={market_folder}'], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
  assert convert.returncode == 0, convert.stderr[-3000:]
  root = market_folder / 'reid'
  workdir = tmp_path / 'market'
  overrides = {'data.root': root, 'model.depth': 18, 'model.width': 8,
               'data.image_size': '(32,16)', 'num_train_steps': 2}
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/market1501_bot.py', f'--workdir={workdir}',
       *(f'--config.{k}={v}' for k, v in overrides.items())],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'camera filter' not in proc.stderr  # every name has its camera
  val = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()
         if '"split": "val"' in x]
  assert val[-1]['step'] == 2  # the end of the run is always evaluated

  lists = {name: str(root / 'meta' / f'{name}.txt') for name in ('query', 'gallery')}
  table = run_flags(str(workdir), '--checkpoint=latest', f'--query_list={lists["query"]}',
                    f'--gallery_list={lists["gallery"]}')
  assert f"{100 * val[-1]['mAP']:.2f}" in table
  name = next(n for n in os.listdir(workdir) if n.startswith('eval_query_vs_gallery'))
  evaluated = json.loads((workdir / name).read_text())
  assert evaluated['step'] == 2 and evaluated['camera_filter']
  for key in ('mAP', 'R1', 'R5', 'mINP', 'num_queries', 'num_gallery'):
    assert evaluated['metrics'][key] == pytest.approx(val[-1][key], abs=1e-6), key

  # The NumPy reference on the embeddings file of the same checkpoint.
  x = {}
  for split, path in lists.items():
    out = str(tmp_path / f'{split}.npz')
    run_flags(str(workdir), '--mode=embed', '--checkpoint=latest', f'--list={path}',
              f'--output={out}')
    with np.load(out) as f:
      x[split] = {k: f[k] for k in f}
  cams = {s: np.array([int(re.search(r'_c(\d+)', str(p)).group(1)) for p in x[s]['paths']])
          for s in x}
  aps = numpy_ap(x['query']['embeddings'], x['query']['labels'], x['gallery']['embeddings'],
                 x['gallery']['labels'], cams['query'], cams['gallery'])
  assert val[-1]['mAP'] == pytest.approx(np.nanmean(aps), abs=1e-5)
