"""Shared test setup: quiet TensorFlow, four fake CPU devices, project root importable."""

import os
import sys

# Must happen before TensorFlow or JAX is imported anywhere.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_reid(tmp_path_factory):
  """A small rendered MOT17-layout dataset converted to imgs/ + meta/; returns the reid root."""
  import convert_mot17
  import synthetic_mot

  root = tmp_path_factory.mktemp("synthetic")
  synthetic_mot.render_dataset(str(root / "MOT"), seed=0, num_sequences=3, num_frames=60,
                               num_people=12, width=320, height=180, num_workers=2)
  convert_mot17.convert(str(root / "MOT"), str(root / "reid"), val_split=0.2, num_workers=2)
  return root / "reid"


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, synthetic_reid):
  """A tiny model trained 10 steps, evaluated (normalised, frame gap 30) and saved at 5 and 10."""
  from test_train import tiny_config

  import train

  config = tiny_config(str(synthetic_reid))
  config.num_train_steps = 10
  config.eval.every_steps = 5
  config.eval.normalize = True
  config.eval.frame_gap = 30
  config.log_every_steps = 5
  workdir = str(tmp_path_factory.mktemp("tiny_workdir") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir
