"""Tracking in the loop: BoxMOT trackers with this workdir's ReID model, scored with TrackEval.

  python track.py --workdir=runs/synthetic [--tracker=strongsort,deepocsort,botsort]
      [--gates=0.1,0.2,0.3,0.4,0.5,0.6,0.7] [--detections=gt|det] [--mot_dir=data/SYNTH17]

Needs the tracker extras: `pip install -r requirements-trackers.txt` (boxmot, onnxruntime,
trackeval; boxmot brings torch). Steps:
1. The val sequences: those of the MOT-layout input (`--mot_dir`, default the folder above
   config.data.root, where convert_mot17.py writes `<input_dir>/reid`) whose identities are all
   in the val list, i.e. never trained on. convert_mot17.py splits by identity in sorted order, so
   these are the last sequences; if none is wholly held out, the sequences holding any val identity
   are used with a warning. `--sequences` names them instead.
2. export.py (in a child process: torch never shares a process with JAX here) writes
   `<workdir>/track/reid.onnx` with BoxMOT's sidecar and the appearance calibration gate.
3. Detections are the considered pedestrian gt boxes (`--detections=gt`) or each sequence's
   MOTChallenge `det/det.txt` (`--detections=det`). BoxMOT's own ReID backend (the one a tracker
   builds from `reid_weights=Path('reid.onnx')`) embeds them once per frame; every tracker run
   replays those features, so runs differ only in the tracker and its gate.
4. Each tracker runs without appearance (StrongSort: a constant embedding, as it has no switch;
   DeepOcSort and BotSort: use_embeddings=False), with our ReID at BoxMOT's default gate, at the
   calibrated gate, and at every `--gates` value (StrongSort max_cos_dist, BotSort
   appearance_thresh; DeepOcSort has no gate). TrackEval (MOTChallenge rules, pedestrians) scores
   HOTA, IDF1, ID switches and MOTA over all sequences together.
Results go to `<workdir>/track/results_<detections>.json`, a table to stdout.
"""

import contextlib
import io
import json
import logging as std_logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from absl import app, flags, logging

import convert_mot17

TRACKERS = ('strongsort', 'deepocsort', 'botsort')
# Keyword of each tracker's appearance gate (a cosine distance) and BoxMOT 25.0.0's default.
GATES = {'strongsort': ('max_cos_dist', 0.2), 'botsort': ('appearance_thresh', 0.25)}
DETECTIONS = ('gt', 'det')
EXTRAS = 'pip install -r requirements-trackers.txt'
METRICS = ('HOTA', 'IDF1', 'IDSW', 'MOTA')


class TrackError(ValueError):
  """A problem with the user's input, reported as one line."""


# ---- Packages ----


def require_packages() -> dict[str, str]:
  """Imports boxmot, onnxruntime and trackeval or raises TrackError saying how to install them."""
  versions = {}
  for name in ('boxmot', 'onnxruntime', 'trackeval', 'cv2'):
    try:
      module = __import__(name)
    except ImportError as e:
      raise TrackError(f'track.py needs the tracker extras ({EXTRAS}): {e}') from None
    versions[name] = getattr(module, '__version__', '?')
  return versions


def boxmot_offline() -> None:
  """Stops BoxMOT from pip-installing at run time, and accepts the installed onnxruntime.

  BoxMOT 25.0.0 wants exactly onnxruntime==1.24.3 and pip-installs it (replacing ours) when
  another version is present; any onnxruntime from its own minimum (1.18.1) runs our graph.
  """
  from boxmot.reid.backends import dependencies
  from boxmot.utils.checks import RequirementsChecker

  dependencies.REID_BACKEND_REQUIREMENTS['onnx'] = (
      f'onnxruntime{dependencies.ONNX_RUNTIME_MIN_VERSION}',)

  def refuse(self, install_args, *, description, verbose):
    raise RuntimeError(f'BoxMOT tried to install {" ".join(map(str, install_args))} at run time; '
                       f'install the tracker extras first ({EXTRAS})')
  RequirementsChecker._run_install = refuse


def boxmot_reid(weights: str) -> Any:
  """BoxMOT's ReID backend for an ONNX file, built as its trackers build it from reid_weights."""
  boxmot_offline()
  from boxmot.reid.core import ReID

  return ReID(weights=Path(weights), device='cpu', half=False).model


# ---- Sequences ----


@dataclass
class Sequence:
  """One MOT sequence to track: frame images, gt file and per-frame detections (N x 6)."""
  name: str
  folder: str
  length: int  # frames tracked: 1..length
  images: dict[int, str]
  gt_path: str
  detections: dict[int, np.ndarray]


def _list_identities(path: str) -> set[str]:
  """Identity folders (`<SEQ>_<id>`) of a convert_mot17.py list."""
  try:
    with open(path, encoding='utf-8') as f:
      return {line.rsplit(None, 1)[0].replace('\\', '/').split('/')[0]
              for line in f if line.strip()}
  except FileNotFoundError:
    raise TrackError(f'{path}: missing list') from None


def _sequence_of(identity: str) -> str:
  """'SYNTH17-06-FRCNN_000012' -> 'SYNTH17-06-FRCNN' (metrics.path_metadata's rule; metrics
  imports JAX, which this process keeps out)."""
  match = re.fullmatch(r'(.+)_[0-9]+', identity)
  return match.group(1) if match else identity


def val_sequences(data: dict[str, Any], available: list[str]) -> tuple[list[str], str | None]:
  """Held-out sequences of the config's lists among `available`, and a warning if impure."""
  root = data['root']
  if not data.get('val_list'):
    raise TrackError(f'{root}: the config has no val list, so no val sequences (pass --sequences)')
  val = _list_identities(os.path.join(root, data['val_list']))
  train = (_list_identities(os.path.join(root, data['train_list'])) if data.get('train_list')
           else set())
  val_seqs = sorted({_sequence_of(i) for i in val} & set(available))
  trained = {s: sum(_sequence_of(i) == s for i in train) for s in val_seqs}
  held_out = [s for s in val_seqs if not trained[s]]
  if held_out:
    return held_out, None
  if not val_seqs:
    raise TrackError(f"{os.path.join(root, data['val_list'])}: no val sequence found among "
                     f"{len(available)} sequences of the MOT folder (pass --mot_dir or "
                     "--sequences)")
  return val_seqs, ('no sequence is wholly held out; tracking ' + ', '.join(
      f'{s} ({trained[s]} of its identities were trained on)' for s in val_seqs))


def _mot_boxes(rows: list[tuple[int, float, float, float, float, float]],
               length: int) -> dict[int, np.ndarray]:
  """frame -> N x 6 [x1, y1, x2, y2, conf, cls 0] from (frame, left, top, width, height, conf)."""
  out: dict[int, list] = {f: [] for f in range(1, length + 1)}
  for frame, left, top, width, height, conf in rows:
    if frame <= length and width > 0 and height > 0:
      out[frame].append([left, top, left + width, top + height, conf, 0.0])
  return {f: np.asarray(v, np.float32).reshape(-1, 6) for f, v in out.items()}


def _read_det(path: str) -> list[tuple]:
  """MOTChallenge det.txt rows `frame, -1, left, top, width, height, conf, ...`."""
  rows = []
  try:
    with open(path, encoding='utf-8') as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          nums = [float(x) for x in line.split(',')[:7]]
          rows.append((int(nums[0]), *nums[2:7]))
        except (ValueError, IndexError):
          raise TrackError(f'{path}:{lineno}: expected frame,id,left,top,width,height,conf,...'
                           ) from None
  except FileNotFoundError:
    raise TrackError(f'{path}: missing det.txt (--detections=det)') from None
  return rows


def load_sequence(folder: str, detections: str, max_frames: int | None = None) -> Sequence:
  """A sequence's frames, gt and detections; max_frames keeps the first frames only."""
  info_path = os.path.join(folder, 'seqinfo.ini')
  info = convert_mot17.read_seqinfo(info_path)
  images, _ = convert_mot17.frame_files(os.path.join(folder, info.im_dir), info.im_ext, info_path)
  length = min(info.seq_length, max_frames or info.seq_length)
  missing = [f for f in range(1, length + 1) if f not in images]
  if missing:
    raise TrackError(f'{os.path.join(folder, info.im_dir)}: no image for frame {missing[0]}')
  gt_path = os.path.join(folder, 'gt', 'gt.txt')
  gt = convert_mot17.read_gt(gt_path, info.seq_length)
  if detections == 'gt':  # what TrackEval scores: considered pedestrians
    rows = [(r.frame, r.left, r.top, r.width, r.height, 1.0) for r in gt
            if r.cls == convert_mot17.PEDESTRIAN and r.consider != 0]
  else:
    rows = _read_det(os.path.join(folder, 'det', 'det.txt'))
  image_dir = os.path.join(folder, info.im_dir)
  return Sequence(info.name, folder, length,
                  {f: os.path.join(image_dir, images[f]) for f in range(1, length + 1)},
                  gt_path, _mot_boxes(rows, length))


def find_sequences(mot_dir: str, splits: list[str], names: list[str]) -> dict[str, str]:
  """Sequence name -> folder for `names` (convert_mot17's rules for the MOT layout)."""
  folders = convert_mot17.list_sequences(mot_dir, splits)
  unknown = [n for n in names if n not in folders]
  if unknown:
    raise TrackError(f'{mot_dir}: no sequence {unknown[0]} in {", ".join(splits)}')
  return {n: folders[n] for n in names}


# ---- Running trackers ----


class FrameFeatures:
  """A reid_model for BoxMOT trackers that hands back features computed once per frame."""

  def __init__(self, features: dict[int, np.ndarray] | None, dim: int = 0):
    self.features, self.dim, self.frame = features, dim, 0

  def get_features(self, boxes, image) -> np.ndarray:
    """The current frame's features (or a constant unit vector per box when there are none)."""
    if self.features is None:
      return np.full((len(boxes), self.dim), 1.0 / np.sqrt(self.dim), np.float32)
    features = self.features[self.frame]
    if len(features) != len(boxes):
      raise RuntimeError(f'frame {self.frame}: {len(boxes)} boxes but {len(features)} features')
    return features


def _read_frame(path: str) -> np.ndarray:
  import cv2

  image = cv2.imread(path, cv2.IMREAD_COLOR)
  if image is None:
    raise TrackError(f'{path}: cannot read image')
  return image


def sequence_features(reid: Any, seq: Sequence) -> dict[int, np.ndarray]:
  """BoxMOT's ReID features of every frame's detections (BGR frames, as trackers get them)."""
  out = {}
  for frame in range(1, seq.length + 1):
    boxes = seq.detections[frame]
    out[frame] = (np.asarray(reid.get_features(boxes[:, :4], _read_frame(seq.images[frame])),
                             np.float32) if len(boxes) else np.zeros((0, 0), np.float32))
  return out


def make_tracker(name: str, reid_model: FrameFeatures | None, gate: float | None = None) -> Any:
  """A BoxMOT tracker with its defaults; reid_model None runs it without appearance."""
  import boxmot

  cls = {'strongsort': boxmot.StrongSort, 'deepocsort': boxmot.DeepOcSort,
         'botsort': boxmot.BotSort}[name]
  kwargs = {}
  if gate is not None:
    kwargs[GATES[name][0]] = gate
  if reid_model is None:
    return cls(use_embeddings=False, **kwargs)
  return cls(reid_model=reid_model, **kwargs)


def run_tracker(tracker: Any, seq: Sequence, replay: FrameFeatures | None) -> list[str]:
  """MOTChallenge result lines `frame,id,left,top,width,height,conf,-1,-1,-1` for a sequence."""
  lines = []
  for frame in range(1, seq.length + 1):
    if replay is not None:
      replay.frame = frame
    tracks = tracker.update(seq.detections[frame], _read_frame(seq.images[frame]))
    for x1, y1, x2, y2, track_id, conf, *_ in np.asarray(tracks).reshape(-1, 8):
      lines.append(f'{frame},{int(track_id)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},'
                   f'{conf:.4f},-1,-1,-1\n')
  return lines


# ---- Scoring ----


def write_gt(seq: Sequence, gt_root: str) -> None:
  """The sequence's gt rows of the tracked frames, where TrackEval looks for them."""
  folder = os.path.join(gt_root, seq.name, 'gt')
  os.makedirs(folder, exist_ok=True)
  with open(seq.gt_path, encoding='utf-8') as f:
    rows = [line for line in f if line.strip() and int(float(line.split(',')[0])) <= seq.length]
  with open(os.path.join(folder, 'gt.txt'), 'w', encoding='utf-8') as f:
    f.writelines(rows)


def trackeval_scores(gt_root: str, runs_root: str, runs: list[str],
                     lengths: dict[str, int]) -> dict[str, dict[str, float]]:
  """HOTA, IDF1, IDSW, MOTA (and IDs, Frag) of each run over all sequences, via TrackEval."""
  import trackeval

  eval_config = {**trackeval.Evaluator.get_default_eval_config(), 'USE_PARALLEL': False,
                 'PRINT_RESULTS': False, 'PRINT_CONFIG': False, 'TIME_PROGRESS': False,
                 'OUTPUT_SUMMARY': False, 'OUTPUT_DETAILED': False, 'PLOT_CURVES': False,
                 'LOG_ON_ERROR': None}
  dataset_config = {**trackeval.datasets.MotChallenge2DBox.get_default_dataset_config(),
                    'GT_FOLDER': gt_root, 'TRACKERS_FOLDER': runs_root, 'TRACKERS_TO_EVAL': runs,
                    'SKIP_SPLIT_FOL': True, 'SEQ_INFO': dict(lengths), 'PRINT_CONFIG': False,
                    'BENCHMARK': 'MOT17', 'CLASSES_TO_EVAL': ['pedestrian']}
  with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints its configs and progress
    metrics_list = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR(),
                    trackeval.metrics.Identity()]
    results, _ = trackeval.Evaluator(eval_config).evaluate(
        [trackeval.datasets.MotChallenge2DBox(dataset_config)], metrics_list)
  out = {}
  for run in runs:
    res = results['MotChallenge2DBox'][run]['COMBINED_SEQ']['pedestrian']
    out[run] = {'HOTA': 100 * float(np.mean(res['HOTA']['HOTA'])),
                'IDF1': 100 * float(res['Identity']['IDF1']),
                'IDSW': int(res['CLEAR']['IDSW']), 'MOTA': 100 * float(res['CLEAR']['MOTA']),
                'Frag': int(res['CLEAR']['Frag'])}
  return out


# ---- The evaluation ----


def export_model(workdir: str, output: str, checkpoint: str) -> None:
  """export.py in a child process (it runs JAX; torch never shares a process with it here)."""
  os.makedirs(os.path.dirname(output), exist_ok=True)
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'export.py')
  result = subprocess.run([sys.executable, script, f'--workdir={workdir}', f'--output={output}',
                           f'--checkpoint={checkpoint}', '--overwrite'],
                          capture_output=True, text=True)
  if result.returncode:
    lines = result.stderr.strip().splitlines() or ['export.py failed']
    raise TrackError(lines[-1].removeprefix('error: '))
  print(result.stdout.strip())


def calibrated_gate(weights: str) -> float | None:
  """The gate export.py recorded in the weights' reid.json, if any."""
  path = os.path.splitext(weights)[0] + '.json'
  try:
    with open(path, encoding='utf-8') as f:
      calibration = json.load(f).get('appearance_distance')
  except (OSError, ValueError):
    return None
  return round(float(calibration['gate']), 3) if calibration else None


def plan_runs(trackers: list[str], gates: list[float], calibrated: float | None
              ) -> list[dict[str, Any]]:
  """Every (tracker, appearance, gate) run: no appearance, default gate, calibrated, sweep."""
  runs = []
  for name in trackers:
    runs.append({'tracker': name, 'appearance': 'none', 'gate': None})
    if name not in GATES:
      runs.append({'tracker': name, 'appearance': 'ours', 'gate': None})
      continue
    default = GATES[name][1]
    for gate in sorted({default, *gates, *([calibrated] if calibrated is not None else [])}):
      runs.append({'tracker': name, 'appearance': 'ours', 'gate': gate})
  for run in runs:
    gate = '' if run['gate'] is None else f"_gate{run['gate']:g}"
    run['name'] = f"{run['tracker']}_{run['appearance']}{gate}"
  return runs


def evaluate_tracking(workdir: str, *, trackers: tuple[str, ...] = TRACKERS,
                      gates: tuple[float, ...] = (), detections: str = 'gt',
                      mot_dir: str | None = None, splits: tuple[str, ...] = ('train',),
                      sequences: list[str] | None = None, reid_weights: str | None = None,
                      checkpoint: str = 'best', max_frames: int | None = None) -> dict[str, Any]:
  """Runs and scores every planned run; returns the results dict that main() writes."""
  unknown = sorted(set(trackers) - set(TRACKERS))
  if unknown or not trackers:
    raise TrackError(f'--tracker: {unknown or "none"} not in {", ".join(TRACKERS)}')
  if detections not in DETECTIONS:
    raise TrackError(f'--detections must be one of {", ".join(DETECTIONS)}, got {detections!r}')
  if any(not 0 < g <= 2 for g in gates):
    raise TrackError(f'--gates are cosine distances in (0, 2], got {list(gates)}')
  config_path = os.path.join(workdir, 'config.json')
  try:
    with open(config_path, encoding='utf-8') as f:
      data = json.load(f)['data']
  except FileNotFoundError:
    raise TrackError(f'{config_path}: missing (is {workdir} a train.py workdir?)') from None
  versions = require_packages()
  mot_dir = mot_dir or os.path.dirname(os.path.abspath(data['root']))
  warning = None
  if not sequences:
    available = list(convert_mot17.list_sequences(mot_dir, list(splits)))
    sequences, warning = val_sequences(data, available)
    if warning:
      logging.warning('%s', warning)
  seqs = [load_sequence(folder, detections, max_frames)
          for folder in find_sequences(mot_dir, list(splits), sequences).values()]

  out_dir = os.path.join(workdir, 'track')
  if reid_weights is None:
    reid_weights = os.path.join(out_dir, 'reid.onnx')
    export_model(workdir, reid_weights, checkpoint)
  elif not os.path.isfile(reid_weights):
    raise TrackError(f'{reid_weights}: no such ONNX file')
  calibrated = calibrated_gate(reid_weights)

  std_logging.getLogger('boxmot').setLevel(std_logging.WARNING)  # not every tracker's settings
  reid = boxmot_reid(reid_weights)
  features = {seq.name: sequence_features(reid, seq) for seq in seqs}
  dim = next((f.shape[1] for per_seq in features.values() for f in per_seq.values() if f.size), 1)

  runs = plan_runs(trackers, list(gates), calibrated)
  runs_root = os.path.join(out_dir, f'runs_{detections}')
  gt_root = os.path.join(out_dir, f'gt_{detections}')
  for folder in (runs_root, gt_root):  # this command's own output from an earlier call
    shutil.rmtree(folder, ignore_errors=True)
  for seq in seqs:
    write_gt(seq, gt_root)
  for run in runs:
    os.makedirs(os.path.join(runs_root, run['name'], 'data'))
    for seq in seqs:
      if run['appearance'] == 'ours':
        replay = FrameFeatures(features[seq.name])
      else:  # StrongSort needs embeddings: a constant one leaves only its motion cost
        replay = FrameFeatures(None, dim) if run['tracker'] == 'strongsort' else None
      tracker = make_tracker(run['tracker'], replay, run['gate'])
      lines = run_tracker(tracker, seq, replay)
      with open(os.path.join(runs_root, run['name'], 'data', f'{seq.name}.txt'), 'w') as f:
        f.writelines(lines)
    logging.info('tracked %s', run['name'])
  scores = trackeval_scores(gt_root, runs_root, [r['name'] for r in runs],
                            {seq.name: seq.length for seq in seqs})
  for run in runs:
    run.update(scores[run['name']])

  best = {}
  for name in trackers:
    gated = [r for r in runs if r['tracker'] == name and r['gate'] is not None]
    if gated:
      # Gates often tie over a plateau: then the one nearest the calibrated (else default) gate.
      anchor = calibrated if calibrated is not None else GATES[name][1]
      top = max(gated, key=lambda r: (round(r['IDF1'], 6), round(r['HOTA'], 6),
                                      -abs(r['gate'] - anchor)))
      best[name] = top['gate']
  return {
      'workdir': os.path.abspath(workdir), 'reid_weights': os.path.abspath(reid_weights),
      'mot_dir': os.path.abspath(mot_dir), 'detections': detections,
      'sequences': {seq.name: seq.length for seq in seqs}, 'warning': warning,
      'calibrated_gate': calibrated, 'default_gates': {k: v[1] for k, v in GATES.items()},
      'best_gate': best, 'versions': versions, 'runs': runs,
  }


def format_table(results: dict[str, Any]) -> str:
  """The runs side by side, one line each, best gate marked."""
  lines = [f"{'tracker':<11} {'appearance':<10} {'gate':>5} " +
           ' '.join(f'{m:>6}' for m in METRICS)]
  for run in results['runs']:
    gate = '-' if run['gate'] is None else f"{run['gate']:.3g}"
    notes = []
    if run['gate'] is not None:
      if run['gate'] == results['default_gates'].get(run['tracker']):
        notes.append('BoxMOT default')
      if run['gate'] == results['calibrated_gate']:
        notes.append('calibrated')
      if run['gate'] == results['best_gate'].get(run['tracker']):
        notes.append('best IDF1')
    lines.append(f"{run['tracker']:<11} {run['appearance']:<10} {gate:>5} "
                 f"{run['HOTA']:6.1f} {run['IDF1']:6.1f} {run['IDSW']:6d} {run['MOTA']:6.1f}"
                 + (f"  ({', '.join(notes)})" if notes else ''))
  return '\n'.join(lines)


# ---- Command line ----

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a script)."""
  flags.DEFINE_string('workdir', None, 'train.py workdir (config.json, checkpoints/).')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number (to export).")
  flags.DEFINE_list('tracker', list(TRACKERS), 'BoxMOT trackers to run.')
  flags.DEFINE_list('gates', [], 'Appearance gates (cosine distance) to sweep for StrongSort '
                    '(max_cos_dist) and BotSort (appearance_thresh), e.g. 0.1,0.2,0.3,0.4,0.5,0.6.')
  flags.DEFINE_enum('detections', 'gt', DETECTIONS, "'gt': the considered gt pedestrians; 'det': "
                    "each sequence's det/det.txt.")
  flags.DEFINE_string('mot_dir', None, 'MOT-layout root holding <split>/<SEQ>/ (default: the '
                      'folder above config.data.root).')
  flags.DEFINE_list('splits', ['train'], 'Split folders of --mot_dir (as convert_mot17.py).')
  flags.DEFINE_list('sequences', [], 'Sequences to track instead of the val sequences.')
  flags.DEFINE_string('reid_weights', None, 'An exported .onnx to use instead of exporting.')
  flags.DEFINE_integer('max_frames', None, 'Track only the first frames of each sequence.')
  flags.mark_flags_as_required(['workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    gates = [float(g) for g in FLAGS.gates]
  except ValueError:
    sys.exit(f'error: --gates: not a number in {",".join(FLAGS.gates)}')
  try:
    results = evaluate_tracking(
        FLAGS.workdir, trackers=FLAGS.tracker, gates=gates, detections=FLAGS.detections,
        mot_dir=FLAGS.mot_dir, splits=FLAGS.splits, sequences=FLAGS.sequences or None,
        reid_weights=FLAGS.reid_weights, checkpoint=FLAGS.checkpoint, max_frames=FLAGS.max_frames)
    import checkpoints  # after the torch work: imports JAX

    path = os.path.join(FLAGS.workdir, 'track', f'results_{FLAGS.detections}.json')
    checkpoints.write_atomically(path, (json.dumps(results, indent=2) + '\n').encode())
  except (ValueError, OSError) as e:  # DataError (convert_mot17) is a ValueError
    sys.exit(f'error: {e}')
  print(f"{', '.join(f'{k} ({v})' for k, v in results['sequences'].items())}, "
        f"{results['detections']} detections")
  print(format_table(results))
  if results['best_gate']:
    print('gate to use: ' + ', '.join(f'{k} {GATES[k][0]}={v:g}'
                                      for k, v in results['best_gate'].items())
          + f" (calibrated gate {results['calibrated_gate']}); wrote {path}")


if __name__ == '__main__':
  define_flags()
  app.run(main)
