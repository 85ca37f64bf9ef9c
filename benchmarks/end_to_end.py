"""The demo's wall time split into render, convert, train and evaluate; prints a markdown row.

  python benchmarks/end_to_end.py                          # demo.sh's steps, into a fresh folder
  python benchmarks/end_to_end.py --output_dir=/tmp/e2e --synthetic_arg=--num_sequences=2 \\
      --train_arg=--config.num_train_steps=4 --train_arg=--config.model.width=8

Runs demo.sh's three commands (same flags) on a dataset of its own under --output_dir, which must
not exist (or, with --overwrite, must be one this script made). Render and convert are timed
around their processes. train.py runs once with evaluation on, as in the demo; the evaluation
time is read from its log: for each 'step S val' line, the time since the line before it (the
'step S/...' train line when evaluation steps are also log steps, as in configs/synthetic.py;
otherwise the figure includes some training and is marked '≈'). Train = train.py's wall time
minus that, so it includes start-up, compilation and checkpointing.
"""

import datetime
import os
import re
import shutil
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
MARKER = '.end_to_end_benchmark'

# absl's prefix: 'I1125 05:41:36.123456 140234 train.py:345] message'.
LOG_LINE = re.compile(r'^[IWEF](\d{4}) (\d\d):(\d\d):(\d\d\.\d+) +\d+ +\S+\] (.*)$')
VAL_LINE = re.compile(r'^step (\d+) val ')
TRAIN_LINE = re.compile(r'^step (\d+)/(\d+) .* ([\d.]+) img/s')


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script)."""
  flags.DEFINE_string('output_dir', os.path.join(ROOT, 'data', 'bench_end_to_end'),
                      'Fresh folder for the rendered data, the converted set and the run.')
  flags.DEFINE_bool('overwrite', False, 'Replace --output_dir if an earlier run of this made it.')
  flags.DEFINE_string('config', 'configs/synthetic.py', 'Training config (demo.sh uses this).')
  flags.DEFINE_multi_string('synthetic_arg', [], 'An extra synthetic_mot.py flag (repeatable).')
  flags.DEFINE_multi_string('train_arg', [], 'An extra train.py flag (repeatable).')


# ---- Log parsing ----


def log_seconds(month_day: str, hours: str, minutes: str, seconds: str) -> float:
  """Seconds since the start of the year-less date (enough to subtract two nearby lines)."""
  month, day = int(month_day[:2]), int(month_day[2:])
  return (((month * 31 + day) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(seconds)


def parse_train_log(log: str) -> dict:
  """Evaluation seconds, whether they are exact, last images/s and steps from train.py's log."""
  lines = []
  for raw in log.splitlines():
    match = LOG_LINE.match(raw)
    if match:
      lines.append((log_seconds(*match.groups()[:4]), match.group(5)))
  eval_s, exact, images_per_s, steps = 0.0, True, None, None
  for index, (when, message) in enumerate(lines):
    train = TRAIN_LINE.match(message)
    if train:
      steps, images_per_s = int(train.group(2)), float(train.group(3))
    val = VAL_LINE.match(message)
    if val and index > 0:
      before, previous = lines[index - 1]
      eval_s += when - before
      exact &= previous.startswith(f'step {val.group(1)}/')
  return {'eval_s': eval_s, 'eval_exact': exact, 'images_per_s': images_per_s, 'steps': steps,
          'num_evals': sum(bool(VAL_LINE.match(m)) for _, m in lines)}


# ---- Running the stages ----


def run_stage(name: str, command: list[str]) -> tuple[float, str, str]:
  """Runs one command from the repo root; returns (seconds, stdout, stderr); exits on failure."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0')
  start = time.perf_counter()
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - start
  if result.returncode != 0:
    sys.exit(f'error: {name} failed ({" ".join(command)}):\n{result.stderr[-3000:]}')
  print(f'done: {name} in {seconds:.1f} s', flush=True)
  return seconds, result.stdout, result.stderr


def prepare_output_dir(path: str, overwrite: bool):
  """Creates a fresh output folder; only ever deletes one that carries this script's marker."""
  if os.path.exists(path) and os.listdir(path):
    if not overwrite:
      raise app.UsageError(f'{path} exists; pass --overwrite or another --output_dir')
    if not os.path.exists(os.path.join(path, MARKER)):
      raise app.UsageError(f'{path} was not made by this benchmark; refusing to delete it')
    shutil.rmtree(path)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, MARKER), 'w') as f:
    f.write('made by benchmarks/end_to_end.py\n')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  out = os.path.abspath(FLAGS.output_dir)
  prepare_output_dir(out, FLAGS.overwrite)
  mot, reid, workdir = (os.path.join(out, name) for name in ('SYNTH17', 'reid', 'run'))
  python = sys.executable
  render_s, _, _ = run_stage('render', [python, 'synthetic_mot.py', f'--output_dir={mot}',
                                        '--seed=0', *FLAGS.synthetic_arg])
  convert_s, _, _ = run_stage('convert', [python, 'convert_mot17.py', f'--input_dir={mot}',
                                          f'--output_dir={reid}', '--val_split=0.2',
                                          '--vis_threshold=0.3'])
  train_wall_s, stdout, stderr = run_stage(
      'train.py', [python, 'train.py', f'--config={FLAGS.config}', f'--workdir={workdir}',
                   f'--config.data.root={reid}', '--alsologtostderr', *FLAGS.train_arg])
  log = parse_train_log(stderr)
  with open(os.path.join(out, 'train.log'), 'w') as f:
    f.write(stderr)
  final = next((line[len('final val '):] for line in stdout.splitlines()
                if line.startswith('final val ')), 'n/a').replace(' | ', '; ')
  total_s = render_s + convert_s + train_wall_s
  approx = '' if log['eval_exact'] else '≈'

  print(f'\nCPU: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}; '
        f'{datetime.datetime.now().isoformat(timespec="minutes")}')
  print('Command: python benchmarks/end_to_end.py ' + ' '.join(sys.argv[1:]))
  print(f'Log: {os.path.join(out, "train.log")}\n')
  print('| render (s) | convert (s) | train (s) | evaluate (s) | total (s) | steps | train img/s '
        '| evaluations | final val |')
  print('|---|---|---|---|---|---|---|---|---|')
  rate = 'n/a' if log['images_per_s'] is None else f"{log['images_per_s']:.1f}"
  print(f"| {render_s:.1f} | {convert_s:.1f} | {approx}{train_wall_s - log['eval_s']:.1f} | "
        f"{approx}{log['eval_s']:.1f} | {total_s:.1f} | {log['steps']} | {rate} | "
        f"{log['num_evals']} | {final} |")


if __name__ == '__main__':
  define_flags()
  app.run(main)
