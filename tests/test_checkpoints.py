"""Tests for checkpoints.py: the workdir's files, checkpoint scoring and atomic writes."""

import json
import logging
import os

import numpy as np
import pytest

import checkpoints
from configs import default


def test_checkpoint_score_ranks_nan_last():
  assert checkpoints.checkpoint_score({'mAP': 0.5}) == 0.5
  assert checkpoints.checkpoint_score({'mAP': float('nan')}) == -np.inf  # last, not random
  assert checkpoints.checkpoint_score({}) == -np.inf


def test_quiet_logs_drops_orbax_chatter_and_the_tpu_notice():
  quiet = checkpoints.QuietLogs(logging.WARNING)

  def record(name, level, pathname='x.py', msg='m'):
    return logging.LogRecord(name, level, pathname, 1, msg, None, None)
  orbax = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'manager.py')
  assert not quiet.filter(record('jax._src.xla_bridge', logging.INFO,
                                 msg="Unable to initialize backend 'tpu'"))
  assert quiet.filter(record('jax._src.xla_bridge', logging.WARNING))  # e.g. no CUDA jaxlib
  assert not quiet.filter(record('absl', logging.INFO, orbax))
  assert quiet.filter(record('absl', logging.WARNING, orbax))
  assert not quiet.filter(record('absl', logging.WARNING, orbax, 'did not provide metrics'))
  assert quiet.filter(record('absl', logging.INFO))  # our own progress lines stay


def test_resume_drops_metrics_lines_after_the_checkpoint(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'split': 'train'}) for s in (1, 2, 3, 4)]
  path.write_text('\n'.join(lines) + '\n{"step": 5, "spl')  # the last line cut by a kill
  checkpoints._drop_lines_after(str(path), 2)
  assert path.read_text().splitlines() == lines[:2]


def test_write_atomically_keeps_what_exists_unless_told(tmp_path):
  path = tmp_path / 'out.bin'
  checkpoints.write_atomically(str(path), b'first')
  checkpoints.write_atomically(str(path), b'second')  # overwrite is the default
  assert path.read_bytes() == b'second'
  with pytest.raises(ValueError, match='out.bin: exists'):
    checkpoints.write_atomically(str(path), b'third', overwrite=False)
  assert path.read_bytes() == b'second'
  assert os.listdir(tmp_path) == ['out.bin']  # no temporary file left behind


def test_config_round_trip_and_changed_config_is_kept(tmp_path):
  config = default.get_config()
  checkpoints.save_config(config, str(tmp_path), num_classes=7)
  loaded = checkpoints.load_config(str(tmp_path))
  assert loaded.num_classes == 7 and tuple(loaded.data.image_size) == (256, 128)
  config.optimizer.lr = 0.5
  checkpoints.save_config(config, str(tmp_path), num_classes=7)
  assert checkpoints.load_config(str(tmp_path)).optimizer.lr == 0.5
  previous = json.loads((tmp_path / 'config.json.previous').read_text())
  assert previous['optimizer']['lr'] == default.get_config().optimizer.lr


def test_load_config_errors_name_the_file(tmp_path):
  with pytest.raises(ValueError, match='no such directory'):
    checkpoints.load_config(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='config.json: not found'):
    checkpoints.load_config(str(tmp_path))
  (tmp_path / 'config.json').write_text('{"data": \n')
  with pytest.raises(ValueError, match=r'config.json:\d+: not valid JSON'):
    checkpoints.load_config(str(tmp_path))
