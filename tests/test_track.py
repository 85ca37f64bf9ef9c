"""Tests for track.py: val sequences, BoxMOT trackers with our ReID, TrackEval scores, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import track

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fake_workdir(tmp_path, root, val_list='meta/val.txt', train_list='meta/train.txt'):
  """A workdir holding only config.json, pointing at lists under `root`."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  data = {'root': str(root), 'val_list': val_list, 'train_list': train_list, 'image_dir': 'imgs'}
  (workdir / 'config.json').write_text(json.dumps({'data': data}))
  return str(workdir)


# ---- Val sequences and errors (no tracker extras needed) ----


def test_val_sequences_prefer_wholly_held_out_ones(tmp_path):
  meta = tmp_path / 'meta'
  meta.mkdir()
  (meta / 'train.txt').write_text('A-01_000001/000001.jpg 0\nA-02_000003/000002.jpg 1\n')
  (meta / 'val.txt').write_text('A-02_000004/000001.jpg 0\nA-03_000001/000001.jpg 1\n')
  data = {'root': str(tmp_path), 'val_list': 'meta/val.txt', 'train_list': 'meta/train.txt'}
  assert track.val_sequences(data, ['A-01', 'A-02', 'A-03']) == (['A-03'], None)
  sequences, warning = track.val_sequences(data, ['A-01', 'A-02'])
  assert sequences == ['A-02'] and 'A-02 (1 of its identities were trained on)' in warning
  with pytest.raises(track.TrackError, match='no val sequence found among 1 sequences'):
    track.val_sequences(data, ['A-01'])
  with pytest.raises(track.TrackError, match='no val list'):
    track.val_sequences({**data, 'val_list': ''}, ['A-01'])


def test_missing_tracker_extras_is_one_clear_error(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'trackeval', None)  # import trackeval -> ImportError
  with pytest.raises(track.TrackError, match='requirements-trackers.txt.*trackeval'):
    track.require_packages()
  workdir = fake_workdir(tmp_path, tmp_path)
  with pytest.raises(track.TrackError, match='pip install -r requirements-trackers.txt'):
    track.evaluate_tracking(workdir)


def test_cli_without_val_sequences_is_one_line_error(tmp_path, synthetic_reid):
  pytest.importorskip('trackeval')
  pytest.importorskip('boxmot')
  meta = tmp_path / 'meta'
  meta.mkdir()
  (meta / 'train.txt').write_text('OTHER-01_000001/000001.jpg 0\n')
  (meta / 'val.txt').write_text('OTHER-02_000001/000001.jpg 0\n')
  workdir = fake_workdir(tmp_path, tmp_path)
  mot_dir = synthetic_reid.parent / 'MOT'
  result = subprocess.run([sys.executable, os.path.join(ROOT, 'track.py'), f'--workdir={workdir}',
                           f'--mot_dir={mot_dir}'], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 1, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last == (f'error: {meta / "val.txt"}: no val sequence found among 3 sequences of the '
                  'MOT folder (pass --mot_dir or --sequences)')
  assert 'Traceback' not in result.stderr
  assert sorted(os.listdir(workdir)) == ['config.json']


# ---- Tracking a tiny synthetic MOT set ----


@pytest.fixture(scope='module')
def results(tiny_workdir, synthetic_reid):
  """One evaluate_tracking call over the tiny set: all three trackers, one extra gate."""
  pytest.importorskip('boxmot')  # the tracker extras: requirements-trackers.txt
  pytest.importorskip('trackeval')
  return track.evaluate_tracking(tiny_workdir, gates=(0.5,),
                                 mot_dir=str(synthetic_reid.parent / 'MOT'), max_frames=25)


def test_tracking_scores_ours_and_no_appearance_for_every_tracker(results, tiny_workdir):
  # conftest's 3 x 12 identities put 7 or 8 of SYNTH17-03's in val: no sequence is wholly
  # held out, so that sequence is tracked with a warning.
  assert results['sequences'] == {'SYNTH17-03-FRCNN': 25}
  assert 'SYNTH17-03-FRCNN' in results['warning']
  assert 0 < results['calibrated_gate'] < 2
  runs = {(r['tracker'], r['appearance'], r['gate']): r for r in results['runs']}
  for name in track.TRACKERS:
    assert (name, 'none', None) in runs
    for run in (r for r in results['runs'] if r['tracker'] == name):
      assert 0 < run['IDF1'] <= 100 and 0 < run['HOTA'] <= 100 and run['IDSW'] >= 0
      assert -100 < run['MOTA'] <= 100
  for name, (_, default) in track.GATES.items():
    gates = {g for (t, a, g) in runs if t == name and a == 'ours'}
    assert gates == {default, 0.5, results['calibrated_gate']}
    assert results['best_gate'][name] in gates
  assert ('deepocsort', 'ours', None) in runs
  # Every run's MOT file and the gt TrackEval read are in the workdir.
  data = os.path.join(tiny_workdir, 'track', 'runs_gt', 'strongsort_none', 'data',
                      'SYNTH17-03-FRCNN.txt')
  frames = {int(line.split(',')[0]) for line in open(data)}
  assert frames and max(frames) <= 25
  table = track.format_table(results)
  assert len(table.splitlines()) == len(results['runs']) + 1 and 'BoxMOT default' in table


def test_trackeval_scores_a_perfect_tracker_at_100(results, tiny_workdir, tmp_path):
  # The gt itself, written as a tracker's output, must score 100 on every metric.
  gt_root = os.path.join(tiny_workdir, 'track', 'gt_gt')
  rows = [line.split(',') for line in open(os.path.join(gt_root, 'SYNTH17-03-FRCNN', 'gt',
                                                        'gt.txt'))]
  lines = [','.join([*r[:6], '1', '-1', '-1', '-1']) + '\n' for r in rows
           if r[7].strip() == '1' and r[6].strip() != '0']
  (tmp_path / 'perfect' / 'data').mkdir(parents=True)
  (tmp_path / 'perfect' / 'data' / 'SYNTH17-03-FRCNN.txt').write_text(''.join(lines))
  scores = track.trackeval_scores(gt_root, str(tmp_path), ['perfect'], {'SYNTH17-03-FRCNN': 25})
  assert scores['perfect'] == {'HOTA': pytest.approx(100), 'IDF1': pytest.approx(100), 'IDSW': 0,
                               'MOTA': pytest.approx(100), 'Frag': 0}


def test_replayed_features_track_as_the_tracker_own_reid(results, tiny_workdir, synthetic_reid):
  # A StrongSort built from reid_weights (BoxMOT embeds inside update) gives the same tracks.
  import boxmot

  weights = results['reid_weights']
  folder = track.find_sequences(str(synthetic_reid.parent / 'MOT'), ['train'],
                                ['SYNTH17-03-FRCNN'])['SYNTH17-03-FRCNN']
  seq = track.load_sequence(folder, 'gt', max_frames=12)
  replay = track.FrameFeatures(track.sequence_features(track.boxmot_reid(weights), seq))
  replayed = track.run_tracker(track.make_tracker('strongsort', replay), seq, replay)
  own = track.run_tracker(boxmot.StrongSort(reid_weights=track.Path(weights), device='cpu',
                                            half=False), seq, None)
  assert replayed == own and len(own) > 12


def test_boxmot_never_installs_at_run_time(results, monkeypatch):
  from boxmot.utils.checks import RequirementsChecker

  calls = []
  monkeypatch.setattr(subprocess, 'run', lambda *a, **k: calls.append(a))
  track.boxmot_reid(results['reid_weights'])  # BoxMOT alone would pip-install onnxruntime==1.24.3
  with pytest.raises(RuntimeError, match='at run time'):
    RequirementsChecker().check_packages(['surely-not-installed-package==1.0'])
  assert calls == []


def test_det_txt_detections(tmp_path):
  det = tmp_path / 'det.txt'
  det.write_text('1,-1,10,20,30,40,0.9,-1,-1,-1\n2,-1,5,5,10,10,0.3\n')
  rows = track._read_det(str(det))
  boxes = track._mot_boxes(rows, 2)
  np.testing.assert_allclose(boxes[1], [[10, 20, 40, 60, 0.9, 0]])
  np.testing.assert_allclose(boxes[2], [[5, 5, 15, 15, 0.3, 0]])
  det.write_text('1,-1,10,x\n')
  with pytest.raises(track.TrackError, match=r'det.txt:1: expected'):
    track._read_det(str(det))
