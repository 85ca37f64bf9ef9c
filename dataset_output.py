"""Output safety for both converters, which build in a hidden folder and rename it into place."""

import contextlib
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import logging

OUTPUT_ENTRIES = {"imgs", "meta"}  # All a converter writes: only such a folder is replaced.


class DataError(ValueError):
  """A problem with the user's input or flags, reported as one line without a traceback."""


# ---- Lists ----


def write_list(path: str, lines: list[tuple[str, int]]) -> None:
  """Writes `relpath label` lines exactly as MMDetection: one space, '\\n' endings."""
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    f.writelines(f"{relpath} {label}\n" for relpath, label in lines)


# ---- Output folder safety ----


def _resolve_output(output_dir: str) -> str:
  """The directory to write: a symlink to a directory is followed to its target."""
  if not os.path.islink(output_dir):
    return output_dir
  target = os.path.realpath(output_dir)
  if not os.path.exists(target):
    raise DataError(f"{output_dir}: broken symlink (its target {target} does not exist)")
  if not os.path.isdir(target):
    raise DataError(f"{output_dir}: symlink to {target}, which is not a directory")
  # Build next to the target: same filesystem, so the final rename is atomic and the link stays.
  return target


def _warn_stale(output_dir: str) -> None:
  """Warns about temporary folders that killed runs left next to the output (never deletes)."""
  parent, name = os.path.split(output_dir)
  try:
    entries = sorted(os.listdir(parent))
  except OSError:
    return
  for entry in entries:
    if entry.startswith((f".{name}.tmp-", f".{name}.old-")):
      logging.warning("%s: left by an interrupted run; delete it unless a conversion is running",
                      os.path.join(parent, entry))


def _check_output(inputs: Sequence[str], output_dir: str, overwrite: bool) -> None:
  """Refuses outputs that would lose data: an input folder, or existing data without --overwrite."""
  out_real = os.path.realpath(output_dir)
  for folder in inputs:
    in_real = os.path.realpath(folder)
    if os.path.commonpath([out_real, in_real]) in (out_real, in_real):
      raise DataError(f"{output_dir}: output directory must not be, contain or lie inside the "
                      f"input's {in_real}")
  if not os.path.lexists(output_dir):
    return
  if not os.path.isdir(output_dir):
    raise DataError(f"{output_dir}: exists and is not a directory")
  entries = set(os.listdir(output_dir))
  if not entries:
    return
  if not overwrite:
    raise DataError(f"{output_dir}: output directory is not empty (pass --overwrite to replace it)")
  if not entries <= OUTPUT_ENTRIES:
    extra = ", ".join(sorted(entries - OUTPUT_ENTRIES))
    raise DataError(f"{output_dir}: refusing to replace a directory that is not a converter output "
                    f"(contains {extra})")


def _replace_dir(new_dir: str, output_dir: str) -> None:
  """Moves `new_dir` to `output_dir`; an existing output is moved aside first, deleted last."""
  parent, name = os.path.split(os.path.abspath(output_dir))
  if not os.path.lexists(output_dir):
    os.rename(new_dir, output_dir)
    return
  old_dir = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
  os.rename(output_dir, old_dir)
  try:
    os.rename(new_dir, output_dir)
  except BaseException:
    os.rename(old_dir, output_dir)
    raise
  shutil.rmtree(old_dir)


def prepare_output(output_dir: str, inputs: Sequence[str], overwrite: bool) -> str:
  """Checks that writing `output_dir` (absolute) loses nothing; returns the directory to build.

  `inputs` are the folders the conversion reads: the output may not be, hold or lie in one.
  """
  target = _resolve_output(output_dir)
  _check_output(inputs, target, overwrite)
  _warn_stale(target)
  return target


def publish(target: str, write: Callable[[str], None]) -> None:
  """Runs `write(tmp)` on a hidden empty folder next to `target`, then renames it into place.

  Any failure or interrupt removes the folder and leaves an existing `target` as it was.
  """
  parent, name = os.path.split(target)
  os.makedirs(parent, exist_ok=True)
  # Same parent as the output, so the final rename is atomic and never copies across filesystems.
  tmp_dir = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
  os.mkdir(tmp_dir)
  try:
    write(tmp_dir)
    if os.path.isdir(target) and not os.listdir(target):
      os.rmdir(target)
    _replace_dir(tmp_dir, target)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise


# ---- One-line errors ----


class Terminated(SystemExit):
  """Raised by the SIGTERM handler, so the cleanup that runs for Ctrl-C runs for `timeout` too."""


def _raise_terminated(signum: int, frame: Any) -> None:
  """SIGTERM handler: unwinds the main thread (temporary folder removed, pool terminated)."""
  raise Terminated(128 + signum)


def _os_error_text(e: OSError, output_dir: str) -> str:
  """`path: reason` for an OSError; errors that name no file are blamed on the output."""
  path = e.filename if e.filename is not None else output_dir
  return f"{path}: {e.strerror or e}"


@contextlib.contextmanager
def one_line_errors(output_dir: str) -> Iterator[None]:
  """Turns DataError, OSError, Ctrl-C and SIGTERM into one `error: ...` line and exit status 1."""
  signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    yield
  except DataError as e:
    sys.exit(f"error: {e}")
  except OSError as e:
    sys.exit(f"error: {_os_error_text(e, output_dir)}")
  except KeyboardInterrupt:
    sys.exit(f"error: interrupted; {output_dir} unchanged")
  except Terminated:
    sys.exit(f"error: terminated; {output_dir} unchanged")
