"""Renders a synthetic pedestrian dataset in the MOT17 layout, for demos, tests and benchmarks.

    python synthetic_mot.py --output_dir=data/SYNTH17 --seed=0

writes `<output_dir>/train/SYNTH17-NN-FRCNN/{seqinfo.ini, img1/000001.jpg, ..., gt/gt.txt}`
exactly as MOT17 ships its train split, so `convert_mot17.py` reads it like the real thing. Each
identity has a stable appearance (build, shared-palette clothes, pattern, hat, bag) and walks across
a textured scene with perspective scale, a walk cycle, changing light, occlusion by other people and
scene objects, and leaves and re-enters the frame under the same id. The gt visibility column is the
fraction of the person's own mask that is actually visible (not covered by nearer objects, not
outside the image).
The output is a pure function of the flags (for given Pillow and NumPy versions): every sequence
draws from its own seeded generator, so the bytes do not depend on --num_workers.
--overwrite only replaces a previous output of this script: `train/` holding SYNTH17 sequences,
optionally with the `reid/` folder that convert_mot17.py writes there by default.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from PIL import Image

VARIANTS = ("DPM", "FRCNN", "SDP")
JPEG_QUALITY = 90
FRAME_RATE = 30

# MOT17 class ids used here.
PEDESTRIAN, CAR, STATIC_PERSON, DISTRACTOR, OCCLUDER, GROUND_OCCLUDER, FULL_OCCLUDER = (
    1, 3, 7, 8, 9, 10, 11)

# What a previous output holds: the rendered train/ and convert_mot17.py's default reid/.
SEQUENCE_DIR = re.compile(rf"SYNTH17-\d{{2}}-({'|'.join(VARIANTS)})")
OUTPUT_ENTRIES = {"train", "reid"}
REID_ENTRIES = {"imgs", "meta"}


class DatasetError(ValueError):
  """A user mistake (bad flag, occupied output dir), reported as one line by the CLI."""


# ---- Appearance ----

# Shared palettes (RGB): several identities wear the same colours, so only the combination of
# colours, pattern, build and accessories identifies a person.
TOPS = np.array([
    (200, 40, 40), (30, 40, 110), (25, 25, 28), (225, 225, 220), (120, 120, 125), (40, 120, 60),
    (220, 190, 50), (110, 160, 210), (110, 70, 40), (110, 50, 130), (230, 120, 40), (200, 110, 150),
], np.float32)
BOTTOMS = np.array([
    (40, 60, 110), (20, 20, 24), (90, 90, 95), (190, 170, 130), (80, 55, 35), (120, 150, 190),
    (60, 75, 45),
], np.float32)
SKINS = np.array([(235, 200, 170), (210, 160, 120), (160, 110, 75), (100, 65, 45)], np.float32)
HAIRS = np.array([(20, 15, 10), (70, 45, 25), (150, 110, 60), (200, 180, 120), (130, 130, 130)],
                 np.float32)
SHOES = np.array([(15, 15, 15), (230, 230, 230), (90, 55, 30), (100, 100, 105)], np.float32)
PATTERNS = ("solid", "stripes", "two_tone_h", "two_tone_v")
LEGWEAR = ("trousers", "shorts", "skirt")
BAGS = ("none", "none", "backpack", "shoulder")
MANNEQUIN = np.array((205, 195, 180), np.float32)


@dataclasses.dataclass(frozen=True)
class Appearance:
  """What makes one identity look like itself; lengths are fractions of body height."""
  height_factor: float  # taller or shorter than average at the same depth
  head_r: float
  shoulder: float       # half width at the shoulders
  torso: float          # neck to hip
  leg_w: float          # half width of one leg
  skin: np.ndarray
  hair: np.ndarray
  top: np.ndarray
  top2: np.ndarray      # second colour of stripes / two-tone tops
  pattern: str
  stripe_period: float
  long_sleeves: bool
  bottom: np.ndarray
  legwear: str
  shoes: np.ndarray
  hat: np.ndarray | None
  bag: str
  bag_colour: np.ndarray

  @property
  def aspect(self) -> float:
    """Box width / height: wide enough for swinging limbs and the bag."""
    reach = max(self.shoulder + 0.045 + (0.06 if self.bag == "shoulder" else 0.0),
                self.shoulder + (0.055 if self.bag == "backpack" else 0.0), 0.115 + self.leg_w)
    return 2 * reach + 0.02


def _jitter(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
  """A slightly different shade of a palette colour (a fabric, not a new colour)."""
  return np.clip(colour + rng.normal(0, 6, 3), 0, 255).astype(np.float32)


def random_appearance(rng: np.random.Generator, mannequin: bool = False) -> Appearance:
  """Draws one identity; a mannequin (class 8 distractor) is one flat colour."""
  top_i, top2_i = rng.choice(len(TOPS), 2, replace=False)
  has_hat = rng.random() < 0.25
  look = Appearance(
      height_factor=float(rng.uniform(0.9, 1.1)),
      head_r=float(rng.uniform(0.055, 0.068)),
      shoulder=float(rng.uniform(0.085, 0.125)),
      torso=float(rng.uniform(0.29, 0.35)),
      leg_w=float(rng.uniform(0.028, 0.045)),
      skin=_jitter(rng, SKINS[rng.integers(len(SKINS))]),
      hair=_jitter(rng, HAIRS[rng.integers(len(HAIRS))]),
      top=_jitter(rng, TOPS[top_i]),
      top2=_jitter(rng, TOPS[top2_i]),
      pattern=PATTERNS[rng.integers(len(PATTERNS))],
      stripe_period=float(rng.uniform(0.045, 0.075)),
      long_sleeves=bool(rng.random() < 0.6),
      bottom=_jitter(rng, BOTTOMS[rng.integers(len(BOTTOMS))]),
      legwear=LEGWEAR[rng.choice(3, p=(0.65, 0.2, 0.15))],
      shoes=_jitter(rng, SHOES[rng.integers(len(SHOES))]),
      hat=_jitter(rng, TOPS[rng.integers(len(TOPS))]) if has_hat else None,
      bag=BAGS[rng.integers(len(BAGS))],
      bag_colour=_jitter(rng, TOPS[rng.integers(len(TOPS))]),
  )
  if mannequin:
    flat = {k: MANNEQUIN for k in ("skin", "hair", "top", "top2", "bottom", "shoes")}
    look = dataclasses.replace(look, pattern="solid", hat=None, bag="none", **flat)
  return look


def _palette_index(palette: np.ndarray, colour: np.ndarray) -> int:
  """Which shared palette colour a jittered shade came from."""
  return int(np.argmin(np.abs(palette - colour).sum(1)))


def look_key(look: Appearance) -> tuple:
  """The visible discrete attributes; no two identities of a sequence share all of them."""
  second = _palette_index(TOPS, look.top2) if look.pattern != "solid" else None
  return (_palette_index(TOPS, look.top), second, look.pattern,
          _palette_index(BOTTOMS, look.bottom), look.legwear, look.hat is None, look.bag)


# ---- Sprites ----


def person_sprite(look: Appearance, height: int, phase: float, facing: int,
                  walking: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Draws a person filling a height x (height*aspect) box; returns (float RGB, bool mask)."""
  width = max(3, int(round(height * look.aspect)))
  y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
  # Mirror so that +x is always the walking direction; the back (backpack side) is -x.
  x = ((np.arange(width, dtype=np.float32) + 0.5 - width / 2) / height)[None, :] * facing
  rgb = np.zeros((height, width, 3), np.float32)
  mask = np.zeros((height, width), bool)

  def paint(region, colour):
    region = np.broadcast_to(region, mask.shape)
    if colour.ndim == 3:
      colour = colour[region]
    rgb[region] = colour
    mask[region] = True

  swing = float(np.sin(phase)) if walking else 0.0
  neck = 2.15 * look.head_r + 0.005
  hip = neck + look.torso
  foot = 0.975
  # Legs swing in opposite phase; hips narrow towards the feet.
  t = np.clip((y - hip) / (foot - hip), 0, 1)
  for side in (-1, 1):
    centre = side * 0.45 * look.shoulder * (1 - 0.5 * t) + side * swing * 0.11 * t
    leg = (y >= hip) & (np.abs(x - centre) < look.leg_w)
    if look.legwear == "trousers":
      paint(leg & (y < foot), look.bottom)
    else:
      paint(leg & (y < foot), look.skin)
      if look.legwear == "shorts":
        paint(leg & (t < 0.4), look.bottom)
    shoe = (y >= foot - 0.03) & (x - centre > -look.leg_w) & (x - centre < look.leg_w + 0.025)
    paint(shoe, look.shoes)
  if look.legwear == "skirt":
    flare = look.shoulder * 0.85 + 0.12 * np.clip((y - hip) / 0.22, 0, 1) * look.shoulder
    paint((y >= hip - 0.01) & (y < hip + 0.22) & (np.abs(x) < flare), look.bottom)
  if look.bag == "backpack":
    paint((y > neck + 0.03) & (y < neck + 0.22) & (x < -look.shoulder + 0.03)
          & (x > -look.shoulder - 0.055), look.bag_colour)
  # Torso (tapering to the hips) with the top's pattern.
  taper = look.shoulder - 0.12 * look.shoulder * (y - neck) / look.torso
  torso = (y >= neck) & (y < hip + 0.01) & (np.abs(x) < taper)
  if look.pattern == "stripes":
    top = np.where((np.sin(2 * np.pi * y / look.stripe_period) > 0)[..., None], look.top, look.top2)
  elif look.pattern == "two_tone_h":
    top = np.where((y < neck + 0.45 * look.torso)[..., None], look.top, look.top2)
  elif look.pattern == "two_tone_v":
    top = np.where((x * facing < 0)[..., None], look.top, look.top2)
  else:
    top = np.broadcast_to(look.top, (1, 1, 3))
  top = np.broadcast_to(top, rgb.shape)
  paint(torso, top)
  # Arms swing against the legs; the sleeve is the top's main colour.
  arm_len = look.torso + 0.05
  s = np.clip((y - neck - 0.02) / arm_len, 0, 1)
  for side in (-1, 1):
    centre = side * (look.shoulder + 0.012) - side * swing * 0.08 * s
    arm = (y > neck + 0.015) & (y < neck + 0.02 + arm_len) & (np.abs(x - centre) < 0.024)
    sleeve = s < (0.85 if look.long_sleeves else 0.35)
    paint(arm & sleeve, look.top)
    paint(arm & ~sleeve, look.skin)
  if look.bag == "shoulder":
    strap = (np.abs((y - neck) * 0.5 - (x + look.shoulder) * 1.0) < 0.012) & torso
    paint(strap, look.bag_colour * 0.8)
    paint((y > hip - 0.09) & (y < hip + 0.05) & (x > look.shoulder - 0.01)
          & (x < look.shoulder + 0.06), look.bag_colour)
  # Head: hair on top and at the back, face forward; a hat covers the crown.
  head_cy = look.head_r * 1.05
  head = ((x / (0.82 * look.head_r)) ** 2 + ((y - head_cy) / look.head_r) ** 2) < 1
  paint(head, look.skin)
  paint(head & ((y < head_cy - 0.35 * look.head_r) | (x < -0.35 * look.head_r)), look.hair)
  if look.hat is not None:
    paint(head & (y < head_cy - 0.2 * look.head_r), look.hat)
    paint((np.abs(y - (head_cy - 0.2 * look.head_r)) < 0.012)
          & (x > -0.9 * look.head_r) & (x < 1.5 * look.head_r), look.hat * 0.8)
  # Cylinder shading: darker towards the silhouette's sides.
  shade = 1.0 - 0.35 * (x / (0.5 * look.aspect)) ** 2
  rgb *= shade[..., None]
  return rgb, mask


def _shade_columns(width: int, strength: float = 0.3) -> np.ndarray:
  """A horizontal brightness profile that makes flat rectangles read as solid objects."""
  u = (np.arange(width, dtype=np.float32) + 0.5) / width
  return 1.0 - strength * (2 * u - 1) ** 2


def pole_sprite(height: int, width: int, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A lamp post or sign pole (occluder, class 9)."""
  rgb = np.ones((height, width, 3), np.float32) * colour * _shade_columns(width, 0.5)[None, :, None]
  return rgb, np.ones((height, width), bool)


def crate_sprite(height: int, width: int, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A planter or bench on the ground (occluder on the ground, class 10)."""
  rgb = np.ones((height, width, 3), np.float32) * colour
  rgb[: max(1, height // 4)] *= 1.25  # lit top face
  rgb[:, :: max(2, width // 6)] *= 0.7  # slats
  return np.clip(rgb, 0, 255), np.ones((height, width), bool)


def billboard_sprite(height: int, width: int, colour: np.ndarray,
                     frame_colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """An advertising column or kiosk (full occluder, class 11)."""
  rgb = np.ones((height, width, 3), np.float32) * frame_colour
  border = max(1, width // 10)
  rgb[border:-border or None, border:-border or None] = colour
  rgb *= _shade_columns(width)[None, :, None]
  return rgb, np.ones((height, width), bool)


def car_sprite(height: int, width: int, colour: np.ndarray,
               facing: int) -> tuple[np.ndarray, np.ndarray]:
  """A parked car seen from the side (class 3)."""
  y = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
  x = ((np.arange(width, dtype=np.float32) + 0.5) / width)[None, :]
  x = x if facing > 0 else 1 - x
  body = np.broadcast_to((y > 0.42) & (y < 0.85), (height, width))
  cabin = (y > 0.05) & (y <= 0.42) & (x > 0.22 + 0.15 * (0.42 - y)) & (x < 0.75 - 0.25 * (0.42 - y))
  window = cabin & (y > 0.12) & (y < 0.4) & (np.abs(x - 0.48) > 0.015)
  wheel_r = 0.16 * height
  wheels = np.zeros((height, width), bool)
  for centre in (0.2, 0.8):
    wheels |= ((x - centre) * width) ** 2 + ((y - 0.82) * height) ** 2 < wheel_r**2
  rgb = np.zeros((height, width, 3), np.float32)
  rgb[body | cabin] = colour
  rgb[window] = (60, 75, 90)
  rgb[wheels] = (18, 18, 18)
  return rgb, body | cabin | wheels


# ---- Scene ----


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One drawn object in one frame: its MOT17 row fields and its full sprite (also off-image)."""
  track_id: int
  cls: int
  flag: int
  left: int
  top: int
  rgb: np.ndarray
  mask: np.ndarray
  depth: float  # image y of the ground contact point; larger = nearer the camera

  @property
  def box(self) -> tuple[int, int, int, int]:
    """(bb_left, bb_top, bb_width, bb_height) as written to gt.txt."""
    return self.left, self.top, self.mask.shape[1], self.mask.shape[0]


@dataclasses.dataclass(frozen=True)
class Frame:
  """A rendered frame: the image and the objects in paint order with their visible fractions."""
  image: np.ndarray
  objects: list[SceneObject]
  visibility: np.ndarray


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything fixed about one sequence; frames are rendered from it independently."""
  name: str
  seed: int
  index: int
  width: int
  height: int
  num_frames: int
  background: np.ndarray   # (H, W, 3) float
  light: np.ndarray        # (H, W) static shadows
  gains: np.ndarray        # (num_frames, 3) global brightness / colour per frame
  looks: list[Appearance]  # pedestrian i has track id i + 1
  tracks: np.ndarray       # (people, frames, 4): x centre, foot y, facing, walk phase
  present: np.ndarray      # (people, frames) box overlaps the image
  statics: list[SceneObject]
  crowd: tuple[float, float, float, float]  # foot points inside (x0, y0, x1, y1) get flag 0


def person_height(foot_y: float, image_height: int) -> float:
  """Perspective: people shrink linearly towards a vanishing line at 20% of the image height."""
  return 0.572 * (foot_y - 0.2 * image_height)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A building facade with windows above a tiled pavement, with blotches and grain."""
  ys = np.arange(height, dtype=np.float32)[:, None]
  xs = np.arange(width, dtype=np.float32)[None, :]
  wall_bottom = int(0.36 * height)
  facades = np.array([(150, 80, 60), (200, 185, 160), (140, 140, 145), (120, 150, 170)], np.float32)
  pavements = np.array([(150, 150, 150), (180, 165, 140), (110, 110, 115)], np.float32)
  image = np.empty((height, width, 3), np.float32)
  # Facade: a grid of windows, each lit or dark.
  period_x, period_y = width * rng.uniform(0.07, 0.11), height * rng.uniform(0.09, 0.13)
  col, row = np.floor((xs + rng.uniform(0, period_x)) / period_x), np.floor(ys / period_y)
  in_window = (((xs + rng.uniform(0, period_x)) % period_x) < 0.55 * period_x) & (
      (ys % period_y) > 0.3 * period_y)
  window_tone = rng.uniform(0.25, 0.9, 97).astype(np.float32)
  tone = window_tone[((col * 31 + row * 17) % 97).astype(int)]
  facade = facades[rng.integers(len(facades))]
  wall = np.where(in_window[..., None], tone[..., None] * np.array((170, 190, 210), np.float32),
                  facade)
  image[:wall_bottom] = wall[:wall_bottom]
  # Pavement: tiles in ground coordinates, so they shrink with distance.
  depth = 1.0 / np.maximum(ys - 0.2 * height, 1.0) * height
  ground_x = (xs - width / 2) * depth / height
  tile_u, tile_v = ground_x * 1.5, depth * 1.2
  grout = ((tile_u % 1.0) < 0.04) | ((tile_v % 1.0) < 0.05 * depth.clip(0, 3))
  tile_tone = rng.uniform(0.88, 1.08, 101).astype(np.float32)
  tile = tile_tone[((np.floor(tile_u) * 13 + np.floor(tile_v) * 7) % 101).astype(int)]
  ground = pavements[rng.integers(len(pavements))] * np.where(grout, 0.72, tile)[..., None]
  image[wall_bottom:] = ground[wall_bottom:]
  image[wall_bottom:wall_bottom + max(1, height // 90)] *= 0.5  # kerb
  # Low-frequency blotches (stains, wear) and fine grain.
  small = rng.normal(1.0, 0.06, (max(2, height // 24), max(2, width // 24))).astype(np.float32)
  blotch = np.asarray(Image.fromarray(small, mode="F").resize((width, height), Image.BILINEAR))
  image *= blotch[..., None]
  image += rng.normal(0, 5, image.shape).astype(np.float32)
  return image


def _light(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A soft-edged diagonal building shadow over part of the scene."""
  ys = np.arange(height, dtype=np.float32)[:, None]
  xs = np.arange(width, dtype=np.float32)[None, :]
  edge = rng.uniform(0.1, 0.6) * width + rng.uniform(-0.6, 0.6) * ys
  inside = (edge - xs) if rng.random() < 0.5 else (xs - edge - 0.4 * width)
  softness = 0.02 * width
  return (1.0 - rng.uniform(0.3, 0.45) * np.clip(inside / softness + 0.5, 0, 1)).astype(np.float32)


def _gains(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """Per-frame brightness (clouds) times a per-sequence colour cast."""
  t = np.arange(num_frames, dtype=np.float32)[:, None]
  slow = 0.12 * np.sin(2 * np.pi * t / rng.uniform(60, 240) + rng.uniform(0, 2 * np.pi))
  fast = 0.04 * np.sin(2 * np.pi * t / rng.uniform(15, 40) + rng.uniform(0, 2 * np.pi))
  cast = rng.normal(1.0, 0.04, 3).astype(np.float32)
  return ((rng.uniform(0.85, 1.1) + slow + fast) * cast).astype(np.float32)


def _walk(rng: np.random.Generator, look: Appearance, num_frames: int, width: int,
          height: int) -> tuple[np.ndarray, np.ndarray]:
  """One pedestrian's path: crosses the scene, waits off-screen, comes back (same id)."""
  near, far = 1.02 * height, 0.5 * height
  speed = rng.uniform(0.018, 0.032)  # body heights per frame
  drift_scale = 0.0025 if rng.random() < 0.3 else 0.0007
  drift = rng.normal(0, drift_scale) * height
  foot = rng.uniform(far, near)
  # Start in view heading for the farther edge (so every identity is seen for a while), or
  # about to enter.
  x = rng.uniform(0.05, 0.95) * width
  facing = 1 if x < width / 2 else -1
  late = rng.random() < 0.5 * min(1.0, num_frames / 150)  # short sequences start with everyone
  wait = int(rng.integers(1, max(2, min(100, num_frames // 2)))) if late else 0
  if wait:
    x = -width if facing > 0 else 2 * width
  phase = rng.uniform(0, 2 * np.pi)
  track = np.zeros((num_frames, 4), np.float32)
  present = np.zeros(num_frames, bool)
  for t in range(num_frames):
    h = person_height(foot, height) * look.height_factor
    half = 0.5 * h * look.aspect
    if wait > 0:
      wait -= 1
      if wait == 0:  # re-enter: turned round at the same side, or from the other side
        foot = rng.uniform(far, near)
        drift = rng.normal(0, drift_scale) * height
        facing = -facing if rng.random() < 0.5 else facing
        h = person_height(foot, height) * look.height_factor
        half = 0.5 * h * look.aspect
        x = -half if facing > 0 else width + half
    else:
      x += facing * speed * h
      foot += drift
      if not far <= foot <= near:
        foot, drift = float(np.clip(foot, far, near)), -drift
      phase += 2 * np.pi * speed / 0.8  # one stride cycle per 0.8 body heights walked
      if (facing > 0 and x - half > width) or (facing < 0 and x + half < 0):
        wait = int(rng.integers(30, 150))
    track[t] = (x, foot, facing, phase)
    present[t] = wait == 0 and x + half > 0 and x - half < width
  return track, present


def _static_objects(rng: np.random.Generator, first_id: int, num_people: int, width: int,
                    height: int) -> list[SceneObject]:
  """Poles, planters, kiosks, parked cars, standing people and mannequins, MOT17-style.

  Counts grow with the crowd so that about 70% of gt rows stay considered pedestrians, as in MOT17.
  """
  scale = num_people / 30
  specs = [(OCCLUDER, 0.55, 0.98)] * (1 + int(rng.poisson(1.5 * scale)))
  specs += [(GROUND_OCCLUDER, 0.6, 0.95)] * int(rng.poisson(1.0 * scale))
  specs += [(FULL_OCCLUDER, 0.52, 0.75)] * int(rng.poisson(0.6 * scale))
  specs += [(CAR, 0.52, 0.7)] * int(rng.poisson(1.3 * scale))
  specs += [(STATIC_PERSON, 0.55, 0.95)] * int(rng.poisson(2.8 * scale))
  specs += [(DISTRACTOR, 0.52, 0.8)] * int(rng.poisson(0.8 * scale))
  objects = []
  for offset, (cls, y_lo, y_hi) in enumerate(specs):
    foot = rng.uniform(y_lo, y_hi) * height
    ref = person_height(foot, height)
    colour = TOPS[rng.integers(len(TOPS))] * rng.uniform(0.6, 1.0)
    facing = 1 if rng.random() < 0.5 else -1
    if cls == OCCLUDER:
      rgb, mask = pole_sprite(int(2.6 * ref), max(2, int(0.06 * ref)), np.float32((70, 75, 72)))
    elif cls == GROUND_OCCLUDER:
      rgb, mask = crate_sprite(int(0.38 * ref), int(0.9 * ref), colour * 0.6 + 40)
    elif cls == FULL_OCCLUDER:
      frame_colour = np.float32((40, 60, 50))
      rgb, mask = billboard_sprite(int(1.2 * ref), int(0.55 * ref), colour, frame_colour)
    elif cls == CAR:
      rgb, mask = car_sprite(int(0.72 * ref), int(2.3 * ref), colour, facing)
    else:
      look = random_appearance(rng, mannequin=cls == DISTRACTOR)
      rgb, mask = person_sprite(look, int(ref * look.height_factor), 0.0, facing, walking=False)
    w = mask.shape[1]
    left = int(round(rng.uniform(0.02 * width, 0.98 * width - w))) if w < width else 0
    objects.append(SceneObject(first_id + offset, cls, 0, left, int(round(foot)) - mask.shape[0],
                               rgb, mask, foot))
  return objects


def sequence_name(index: int) -> str:
  """1-based sequence index to its MOT17-style name without the detector suffix."""
  return f"SYNTH17-{index:02d}"


def build_scene(seed: int, index: int, *, num_frames: int, num_people: int, width: int,
                height: int) -> Scene:
  """Draws one sequence's scene, identities and paths from a generator seeded by (seed, index)."""
  rng = np.random.default_rng([seed, index])
  background = _background(rng, width, height)
  light = _light(rng, width, height)
  gains = _gains(rng, num_frames)
  looks, keys = [], set()
  while len(looks) < num_people:
    look = random_appearance(rng)
    if look_key(look) not in keys:  # every identity differs in some discrete attribute
      keys.add(look_key(look))
      looks.append(look)
  paths = [_walk(rng, look, num_frames, width, height) for look in looks]
  tracks = np.stack([p[0] for p in paths]) if paths else np.zeros((0, num_frames, 4), np.float32)
  present = np.stack([p[1] for p in paths]) if paths else np.zeros((0, num_frames), bool)
  statics = _static_objects(rng, num_people + 1, num_people, width, height)
  crowd_x = rng.uniform(0, 0.75) * width
  crowd = (crowd_x, 0.5 * height, crowd_x + 0.25 * width, 0.58 * height)
  return Scene(sequence_name(index), seed, index, width, height, num_frames, background, light,
               gains, looks, tracks, present, statics, crowd)


# ---- Frames ----


def frame_objects(scene: Scene, t: int) -> list[SceneObject]:
  """The objects whose boxes overlap the image at 0-based frame t, in paint order (far first)."""
  objects = list(scene.statics)
  x0, y0, x1, y1 = scene.crowd
  for i in np.flatnonzero(scene.present[:, t]):
    look = scene.looks[i]
    x, foot, facing, phase = (float(v) for v in scene.tracks[i, t])
    h = max(8, int(round(person_height(foot, scene.height) * look.height_factor)))
    rgb, mask = person_sprite(look, h, phase, int(facing))
    flag = 0 if (x0 <= x < x1 and y0 <= foot < y1) else 1
    left = int(round(x - mask.shape[1] / 2))
    if left >= scene.width or left + mask.shape[1] <= 0:  # rounding put it just off-image
      continue
    objects.append(SceneObject(int(i) + 1, PEDESTRIAN, flag, left, int(round(foot)) - h, rgb, mask,
                               foot))
  return sorted(objects, key=lambda o: (o.depth, o.track_id))


def render_frame(scene: Scene, t: int) -> Frame:
  """Paints frame t (0-based) and measures how much of each object's own mask stays visible."""
  height, width = scene.height, scene.width
  objects = frame_objects(scene, t)
  canvas = scene.background.copy()
  owner = np.full((height, width), -1, np.int32)
  for i, obj in enumerate(objects):
    h, w = obj.mask.shape
    x0, x1 = max(obj.left, 0), min(obj.left + w, width)
    y0, y1 = max(obj.top, 0), min(obj.top + h, height)
    if x0 >= x1 or y0 >= y1:
      continue
    crop = (slice(y0 - obj.top, y1 - obj.top), slice(x0 - obj.left, x1 - obj.left))
    mask = obj.mask[crop]
    canvas[y0:y1, x0:x1][mask] = obj.rgb[crop][mask]
    owner[y0:y1, x0:x1][mask] = i
  canvas *= scene.light[..., None] * scene.gains[t]
  noise_rng = np.random.default_rng([scene.seed, scene.index, t])
  canvas += noise_rng.normal(0, 2.5, canvas.shape).astype(np.float32)
  image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
  visible = np.bincount(owner.ravel() + 1, minlength=len(objects) + 1)[1:]
  total = np.array([obj.mask.sum() for obj in objects], np.float64)
  return Frame(image, objects, visible / np.maximum(total, 1))


def format_visibility(fraction: float) -> str:
  """MOT17 style: 5 decimals, trailing zeros dropped (`1`, `0`, `0.67151`)."""
  return f"{round(float(fraction), 5):.5f}".rstrip("0").rstrip(".")


# ---- Writing ----

SEQINFO = """[Sequence]
name={name}
imDir=img1
frameRate={rate}
seqLength={length}
imWidth={width}
imHeight={height}
imExt=.jpg
"""


def render_sequence(root: str, seed: int, index: int, num_frames: int, num_people: int,
                    width: int, height: int, variants: Sequence[str]) -> list[str]:
  """Writes one sequence (all its detector variants) under root/train; returns their dirs."""
  scene = build_scene(seed, index, num_frames=num_frames, num_people=num_people, width=width,
                      height=height)
  dirs = [os.path.join(root, "train", f"{scene.name}-{v}") for v in variants]
  first = dirs[0]
  os.makedirs(os.path.join(first, "img1"))
  os.makedirs(os.path.join(first, "gt"))
  rows = []
  for t in range(num_frames):
    frame = render_frame(scene, t)
    Image.fromarray(frame.image).save(os.path.join(first, "img1", f"{t + 1:06d}.jpg"),
                                      quality=JPEG_QUALITY)
    for obj, vis in zip(frame.objects, frame.visibility, strict=True):
      rows.append((obj.track_id, t + 1, obj.box, obj.flag, obj.cls, vis))
  rows.sort(key=lambda r: (r[0], r[1]))  # MOT17 gt is ordered by id, then frame
  with open(os.path.join(first, "gt", "gt.txt"), "w") as f:
    for track_id, frame_no, (left, top, w, h), flag, cls, vis in rows:
      f.write(f"{frame_no},{track_id},{left},{top},{w},{h},{flag},{cls},{format_visibility(vis)}\n")
  for seq_dir, variant in zip(dirs, variants, strict=True):
    if seq_dir != first:  # MOT17 ships the same images and gt once per detector
      shutil.copytree(first, seq_dir)
    with open(os.path.join(seq_dir, "seqinfo.ini"), "w") as f:
      f.write(SEQINFO.format(name=f"{scene.name}-{variant}", rate=FRAME_RATE, length=num_frames,
                             width=width, height=height))
  return dirs


def _check_args(num_sequences: int, num_frames: int, num_people: int, width: int, height: int,
                variants: Sequence[str]) -> None:
  """Rejects settings that cannot make a dataset, with a one-line reason."""
  if not 1 <= num_sequences <= 99:
    raise DatasetError(f"num_sequences must be 1..99, got {num_sequences}")
  if num_frames < 1 or num_people < 0:
    raise DatasetError(f"need num_frames >= 1 and num_people >= 0, got {num_frames}, {num_people}")
  if width < 64 or height < 64:
    raise DatasetError(f"image must be at least 64x64, got {width}x{height}")
  if not variants or len(set(variants)) != len(variants) or set(variants) - set(VARIANTS):
    raise DatasetError(f"variants must be distinct names from {','.join(VARIANTS)}, got {variants}")


def _check_replaceable(output_dir: str) -> None:
  """Refuses to replace a non-empty directory that is not a previous output of this script."""
  entries = set(os.listdir(output_dir))
  refuse = lambda what: DatasetError(
      f"{output_dir}: refusing to replace a directory that is not a synthetic_mot.py output "
      f"({what})")
  if entries - OUTPUT_ENTRIES:
    raise refuse(f"contains {', '.join(sorted(entries - OUTPUT_ENTRIES))}")
  train = os.path.join(output_dir, "train")
  if not os.path.isdir(train):
    raise refuse("no train/ directory")
  # Real MOT17 also has train/: only rendered sequence names mark it as ours.
  foreign = sorted(n for n in os.listdir(train) if not SEQUENCE_DIR.fullmatch(n))
  if foreign:
    raise refuse(f"train/ contains {', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}")
  reid = os.path.join(output_dir, "reid")
  if "reid" in entries and (not os.path.isdir(reid) or set(os.listdir(reid)) - REID_ENTRIES):
    raise refuse("reid/ is not a convert_mot17.py output")


def render_dataset(output_dir: str, *, seed: int = 0, num_sequences: int = 6,
                   num_frames: int = 150, num_people: int = 30, width: int = 640,
                   height: int = 360, variants: Sequence[str] = ("FRCNN",),
                   num_workers: int | None = None, overwrite: bool = False) -> list[str]:
  """Renders the dataset into output_dir/train atomically; returns the sequence directories."""
  variants = sorted(variants)
  _check_args(num_sequences, num_frames, num_people, width, height, variants)
  output_dir = os.path.abspath(output_dir)
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise DatasetError(f"{output_dir}: exists and is not a directory")
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    if not overwrite:
      raise DatasetError(f"{output_dir}: directory is not empty (pass --overwrite to replace it)")
    _check_replaceable(output_dir)
  parent, base = os.path.split(output_dir)
  os.makedirs(parent, exist_ok=True)
  # Render next to the target and rename at the end, so no half-written dataset is ever visible.
  staging = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
  try:
    jobs = [(staging, seed, i + 1, num_frames, num_people, width, height, variants)
            for i in range(num_sequences)]
    workers = min(num_workers or os.cpu_count() or 1, num_sequences)
    if workers <= 1:
      for job in jobs:
        render_sequence(*job)
    else:  # spawn: forking a process that has started JAX/TF threads can deadlock
      context = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for future in [pool.submit(render_sequence, *job) for job in jobs]:
          future.result()
    if os.path.exists(output_dir):
      old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
      os.rename(output_dir, os.path.join(old, base))
      os.rename(staging, output_dir)
      shutil.rmtree(old)
    else:
      os.rename(staging, output_dir)
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging)
  return sorted(os.path.join(output_dir, "train", f"{sequence_name(i + 1)}-{v}")
                for i in range(num_sequences) for v in variants)


# ---- Command line ----

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declares the command-line flags (only when run as a script: other CLIs share names)."""
  flags.DEFINE_string("output_dir", None, "Dataset root to create (gets a MOT17-style train/).")
  flags.DEFINE_integer("seed", 0, "Random seed; the output is a pure function of all flags.")
  flags.DEFINE_integer("num_sequences", 6, "Number of sequences.")
  flags.DEFINE_integer("num_frames", 150, "Frames per sequence.")
  flags.DEFINE_integer("num_people", 30, "Identities per sequence (about 60% are in view at once).")
  flags.DEFINE_integer("width", 640, "Image width in pixels.")
  flags.DEFINE_integer("height", 360, "Image height in pixels; people are 16-50% of it tall.")
  flags.DEFINE_list("variants", ["FRCNN"], "Detector copies to write, any of DPM,FRCNN,SDP.")
  flags.DEFINE_integer("num_workers", None, "Processes rendering sequences (default: all cores).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace output_dir if it is a previous output (train/, optional reid/).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  start = time.time()
  try:
    dirs = render_dataset(FLAGS.output_dir, seed=FLAGS.seed, num_sequences=FLAGS.num_sequences,
                          num_frames=FLAGS.num_frames, num_people=FLAGS.num_people,
                          width=FLAGS.width, height=FLAGS.height, variants=FLAGS.variants,
                          num_workers=FLAGS.num_workers, overwrite=FLAGS.overwrite)
  except (DatasetError, OSError) as e:
    sys.exit(f"error: {e}")
  logging.info("wrote %d sequence dirs under %s in %.1f s", len(dirs),
               os.path.join(os.path.abspath(FLAGS.output_dir), "train"), time.time() - start)


if __name__ == "__main__":
  define_flags()
  app.run(main)
