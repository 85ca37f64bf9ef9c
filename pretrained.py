"""ImageNet weights for the backbone from a local torchvision/timm file (.safetensors, .npz, .pth).

Key names map one to one onto models.ResNet (torchvision's layout); conv kernels go OIHW -> HWIO.
Nothing is downloaded: the user fetches the file once (docs/training.md).
"""

import importlib.util
import os
from collections.abc import Callable, Mapping

import flax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

# Wrappers that training frameworks put around a backbone state dict, stripped repeatedly.
KEY_PREFIXES = ('module.', 'backbone.', 'model.', 'encoder.')
# BN tensor name in the file -> (variable collection, Flax leaf name).
BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
             'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def _strip_prefixes(key: str) -> str:
  stripped = True
  while stripped:
    stripped = False
    for prefix in KEY_PREFIXES:
      if key.startswith(prefix):
        key, stripped = key[len(prefix):], True
  return key


def _torch_name(flax_module_path: tuple[str, ...]) -> str:
  """('layer1_0', 'downsample_bn') -> 'layer1.0.downsample.1' (torchvision's module name)."""
  names = []
  for part in flax_module_path:
    if part.startswith('layer') and '_' in part:
      names.extend(part.split('_'))
    elif part == 'downsample_conv':
      names.append('downsample.0')
    elif part == 'downsample_bn':
      names.append('downsample.1')
    else:
      names.append(part)
  return '.'.join(names)


def _backbone_targets(params: Mapping, batch_stats: Mapping) -> dict[str, tuple[tuple, Callable]]:
  """torchvision key -> (flat Flax path incl. collection, torch-array -> Flax-array transform)."""
  targets = {}
  for path in traverse_util.flatten_dict(params):
    module, leaf = path[:-1], path[-1]
    if leaf == 'kernel':  # conv: OIHW -> HWIO
      targets[_torch_name(module) + '.weight'] = (('params',) + path,
                                                  lambda a: np.transpose(a, (2, 3, 1, 0)))
  for collection, tree in (('params', params), ('batch_stats', batch_stats)):
    for path in traverse_util.flatten_dict(tree):
      module, leaf = path[:-1], path[-1]
      for torch_leaf, (bn_collection, flax_leaf) in BN_LEAVES.items():
        if bn_collection == collection and flax_leaf == leaf:
          targets[f'{_torch_name(module)}.{torch_leaf}'] = ((collection,) + path, lambda a: a)
  return targets


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  # Report model shapes in the file's layout so the two shapes in a mismatch compare directly.
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  import safetensors.flax
  import safetensors.numpy
  try:
    return dict(safetensors.numpy.load_file(path))
  except TypeError:  # bfloat16 tensors, which NumPy cannot name; JAX can
    return {key: np.asarray(value) for key, value in safetensors.flax.load_file(path).items()}


def _read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    return {key: data[key] for key in data.files}


def _read_torch(path: str) -> dict[str, np.ndarray]:
  import torch
  state = torch.load(path, map_location='cpu', weights_only=True)
  # MMDet/MMEngine and many trainers wrap the weights: {'state_dict': {...}, 'meta': ...}.
  for wrapper in ('state_dict', 'model', 'module'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise TypeError(f'expected a state dict, got {type(state).__name__}')
  return {key: value.detach().float().numpy() if value.is_floating_point() else value.numpy()
          for key, value in state.items() if isinstance(value, torch.Tensor)}


READERS = {'.safetensors': _read_safetensors, '.npz': _read_npz, '.pth': _read_torch,
           '.pt': _read_torch}


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a flat name -> array mapping from .safetensors, .npz or (with torch) .pth/.pt."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: pretrained weights file not found')
  extension = os.path.splitext(path)[1].lower()
  if extension not in READERS:
    raise ValueError(f'{path}: unknown weights format {extension!r} '
                     '(expected .safetensors, .npz, .pth or .pt)')
  if READERS[extension] is _read_torch and importlib.util.find_spec('torch') is None:
    raise ValueError(
        f'{path}: reading .pth/.pt needs PyTorch, which is optional and not installed; install '
        'torch or convert the file to .safetensors on a machine that has it (docs/training.md)')
  try:
    return READERS[extension](path)
  except Exception as e:  # a corrupt or foreign file: say which file, not a traceback
    raise ValueError(f'{path}: cannot read weights ({type(e).__name__}: {e})') from e


def _is_ignored(key: str) -> bool:
  # Classifier of the ImageNet model and torch's BN step counter: meaningless for our backbone.
  return key.endswith('num_batches_tracked') or key.startswith('fc.')


def load_pretrained(params: Mapping, batch_stats: Mapping, path: str) -> tuple[dict, dict, dict]:
  """Fills the backbone from a torchvision/timm-named file; returns (params, batch_stats, report).

  `params`/`batch_stats` are the model's trees from `init` (their 'backbone' subtree is filled) or a
  bare ResNet's trees. Head and GeM are left as initialised. The report has 'loaded', 'ignored',
  'unmatched_file_keys', 'missing_model_keys' (torchvision names) and 'shape_mismatch'
  ([(key, file_shape, model_shape)], both in the file's OIHW layout).
  """
  params, batch_stats = flax.core.unfreeze(params), flax.core.unfreeze(batch_stats)
  nested = 'backbone' in params
  backbone_params = params['backbone'] if nested else params
  backbone_stats = batch_stats.get('backbone', {}) if nested else batch_stats
  targets = _backbone_targets(backbone_params, backbone_stats)
  flat = {'params': traverse_util.flatten_dict(backbone_params),
          'batch_stats': traverse_util.flatten_dict(backbone_stats)}

  state = _read_state_dict(path)
  report = {'loaded': [], 'ignored': [], 'unmatched_file_keys': [], 'missing_model_keys': [],
            'shape_mismatch': []}
  filled = set()
  for file_key, array in state.items():
    key = _strip_prefixes(file_key)
    if key not in targets:
      report['ignored' if _is_ignored(key) else 'unmatched_file_keys'].append(file_key)
      continue
    (collection, *leaf_path), transform = targets[key]
    current = flat[collection][tuple(leaf_path)]
    value = transform(np.asarray(array))
    if value.shape != current.shape:
      report['shape_mismatch'].append(
          (file_key, tuple(np.shape(array)), _to_torch_shape(current.shape)))
      continue
    flat[collection][tuple(leaf_path)] = jnp.asarray(value, dtype=current.dtype)
    filled.add(key)
    report['loaded'].append(file_key)
  report['missing_model_keys'] = sorted(set(targets) - filled)

  if not report['loaded']:
    raise ValueError(
        f'{path}: no tensor matches the model\'s ResNet backbone '
        f'({len(report["unmatched_file_keys"])} unmatched, '
        f'{len(report["shape_mismatch"])} with the wrong shape); '
        'expected torchvision/timm names like "layer1.0.conv1.weight"')
  logging.info('Loaded %d/%d backbone tensors from %s (%d ignored).', len(report['loaded']),
               len(targets), path, len(report['ignored']))
  for name in ('unmatched_file_keys', 'missing_model_keys', 'shape_mismatch'):
    if report[name]:
      logging.warning('%s: %d %s, e.g. %s', path, len(report[name]), name.replace('_', ' '),
                      report[name][:3])

  new_params = traverse_util.unflatten_dict(flat['params'])
  new_stats = traverse_util.unflatten_dict(flat['batch_stats'])
  if nested:
    new_params = {**params, 'backbone': new_params}
    new_stats = {**batch_stats, 'backbone': new_stats}
  return new_params, new_stats, report
