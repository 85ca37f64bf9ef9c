"""Tests for pretrained.py: ImageNet weight import against an independent reference and torch."""

import importlib.util
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_models import (
  IMPORT_INPUT_HW,
  TORCHVISION_LAYOUTS,
  WIDTH,
  backbone_case,
  block_strides,
  init_small,
  random_images,
  random_variables,
  save,
  small_model,
  torchvision_state_dict,
)

import models
import pretrained


@pytest.mark.parametrize('depth', [18, 50])
@pytest.mark.parametrize('fmt', ['safetensors', 'npz', 'pth'])
def test_import_matches_independent_reference(tmp_path, depth, fmt):
  backbone, variables, apply, state, expected = backbone_case(depth)
  path = tmp_path / f'resnet.{fmt}'
  save(state, path, fmt)
  params, batch_stats, report = pretrained.load_pretrained(
      variables['params'], variables['batch_stats'], str(path))
  ignored = sorted(k for k in state if k.endswith('num_batches_tracked') or k.startswith('fc.'))
  assert sorted(report['ignored']) == ignored
  assert sorted(report['loaded']) == sorted(set(state) - set(ignored))
  assert report['unmatched_file_keys'] == report['missing_model_keys'] == []
  assert report['shape_mismatch'] == []
  features = apply({'params': params, 'batch_stats': batch_stats}, random_images(*IMPORT_INPUT_HW))
  assert features.shape == expected.shape
  max_abs = float(np.max(np.abs(np.asarray(features) - expected)))
  print(f'depth {depth} {fmt}: max |flax - reference| = {max_abs:.2e}, '
        f'max |reference| = {np.abs(expected).max():.2f}')
  assert max_abs < 1e-4 * max(1.0, np.abs(expected).max())


def test_import_reads_bfloat16_safetensors(tmp_path):
  # Half-precision checkpoints are common on model hubs; NumPy alone cannot read bfloat16.
  import safetensors.flax
  _, variables, _, state, _ = backbone_case(18)
  path = tmp_path / 'resnet_bf16.safetensors'
  safetensors.flax.save_file({k: jnp.asarray(v, jnp.bfloat16 if v.dtype == np.float32 else None)
                              for k, v in state.items()}, str(path))
  params, batch_stats, report = pretrained.load_pretrained(
      variables['params'], variables['batch_stats'], str(path))
  assert report['missing_model_keys'] == [] and report['unmatched_file_keys'] == []
  assert params['conv1']['kernel'].dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(state['conv1.weight'], jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_array_equal(params['conv1']['kernel'], rounded.transpose(2, 3, 1, 0))


def torch_functional_backbone(torch, state: dict, images_nchw: np.ndarray, depth: int):
  """The same forward with torch.nn.functional: checks our layout against torch's own ops."""
  F = torch.nn.functional
  t = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
  bn = lambda x, n: F.batch_norm(x, t[f'{n}.running_mean'], t[f'{n}.running_var'],
                                 t[f'{n}.weight'], t[f'{n}.bias'], training=False, eps=1e-5)
  conv = lambda x, n, stride, pad: F.conv2d(x, t[f'{n}.weight'], stride=stride, padding=pad)
  bottleneck, _ = TORCHVISION_LAYOUTS[depth]
  x = F.relu(bn(conv(torch.from_numpy(images_nchw), 'conv1', 2, 3), 'bn1'))
  x = F.max_pool2d(x, 3, 2, 1)
  for stage, index, stride in block_strides(depth):
    p = f'layer{stage + 1}.{index}'
    if bottleneck:
      y = F.relu(bn(conv(x, f'{p}.conv1', 1, 0), f'{p}.bn1'))
      y = F.relu(bn(conv(y, f'{p}.conv2', stride, 1), f'{p}.bn2'))
      y = bn(conv(y, f'{p}.conv3', 1, 0), f'{p}.bn3')
    else:
      y = F.relu(bn(conv(x, f'{p}.conv1', stride, 1), f'{p}.bn1'))
      y = bn(conv(y, f'{p}.conv2', 1, 1), f'{p}.bn2')
    if f'{p}.downsample.0.weight' in t:
      x = bn(conv(x, f'{p}.downsample.0', stride, 0), f'{p}.downsample.1')
    x = F.relu(y + x)
  return x.numpy()


def test_pth_checkpoint_wrapped_like_mmdet_matches_torch(tmp_path):
  torch = pytest.importorskip('torch')
  backbone, variables, apply, state, _ = backbone_case(50)
  # MMDet/MMEngine checkpoints: {'state_dict': {'backbone.*', 'head.*'}, 'meta': ...}.
  wrapped = {f'backbone.{k}': torch.from_numpy(np.array(v)) for k, v in state.items()}
  wrapped['head.fc_out.weight'] = torch.zeros(128, 1024)
  path = tmp_path / 'mmdet_reid.pth'
  torch.save({'state_dict': wrapped, 'meta': {'epoch': 6}}, path)
  params, batch_stats, report = pretrained.load_pretrained(
      variables['params'], variables['batch_stats'], str(path))
  assert report['unmatched_file_keys'] == ['head.fc_out.weight']
  assert report['missing_model_keys'] == []
  images = random_images(*IMPORT_INPUT_HW)
  with torch.no_grad():
    expected = torch_functional_backbone(torch, state, images.transpose(0, 3, 1, 2), 50)
  features = np.asarray(apply({'params': params, 'batch_stats': batch_stats}, images))
  max_abs = float(np.max(np.abs(features.transpose(0, 3, 1, 2) - expected)))
  print(f'depth 50 pth vs torch.nn.functional: max |diff| = {max_abs:.2e}')
  assert max_abs < 1e-4 * max(1.0, np.abs(expected).max())


def test_import_into_full_model_fills_backbone_only(tmp_path):
  model = small_model(head='bnneck', pooling='gem')
  images = random_images(64, 32, batch=4)
  variables = init_small(head='bnneck', pooling='gem')
  state = {f'module.backbone.{k}': v for k, v in torchvision_state_dict(18, WIDTH).items()}
  path = tmp_path / 'prefixed.safetensors'
  save(state, path, 'safetensors')
  params, batch_stats, report = pretrained.load_pretrained(
      variables['params'], variables['batch_stats'], str(path))
  assert report['missing_model_keys'] == [] and report['unmatched_file_keys'] == []
  kernel = state['module.backbone.layer1.0.conv1.weight']
  np.testing.assert_array_equal(params['backbone']['layer1_0']['conv1']['kernel'],
                                kernel.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(batch_stats['backbone']['bn1']['var'],
                                state['module.backbone.bn1.running_var'])
  # Head and GeM stay exactly as initialised; the input trees are not modified.
  for name in ('head', 'gem'):
    jax.tree.map(np.testing.assert_array_equal, params[name], variables['params'][name])
  assert not np.array_equal(variables['params']['backbone']['conv1']['kernel'],
                            params['backbone']['conv1']['kernel'])
  model.apply({'params': params, 'batch_stats': batch_stats}, images)  # still a valid model


def test_import_reports_extra_keys_and_shape_mismatches(tmp_path):
  _, variables, _, state, _ = backbone_case(18)
  state = dict(state)
  state['layer9.0.conv1.weight'] = np.zeros((8, 8, 3, 3), np.float32)
  state['layer1.0.conv1.weight'] = np.zeros((8, 8, 5, 5), np.float32)  # model: 3x3
  del state['layer4.1.bn2.running_var']
  path = tmp_path / 'odd.npz'
  save(state, path, 'npz')
  params, _, report = pretrained.load_pretrained(variables['params'], variables['batch_stats'],
                                             str(path))
  assert report['unmatched_file_keys'] == ['layer9.0.conv1.weight']
  assert report['shape_mismatch'] == [('layer1.0.conv1.weight', (8, 8, 5, 5), (8, 8, 3, 3))]
  assert report['missing_model_keys'] == ['layer1.0.conv1.weight', 'layer4.1.bn2.running_var']
  # A mismatched tensor keeps its initial value rather than being silently reshaped.
  np.testing.assert_array_equal(params['layer1_0']['conv1']['kernel'],
                                variables['params']['layer1_0']['conv1']['kernel'])


def test_import_errors_name_the_file(tmp_path, monkeypatch):
  _, variables, _, _, _ = backbone_case(18)
  load = lambda path: pretrained.load_pretrained(variables['params'], variables['batch_stats'],
                                             str(path))
  unrelated = tmp_path / 'bert.safetensors'
  save({'encoder.layer.0.attention.weight': np.zeros((4, 4), np.float32)}, unrelated,
       'safetensors')
  with pytest.raises(ValueError, match='bert.safetensors: no tensor matches'):
    load(unrelated)
  with pytest.raises(ValueError, match='missing.npz: .*not found'):
    load(tmp_path / 'missing.npz')
  unknown = tmp_path / 'weights.h5'
  unknown.write_bytes(b'\0' * 16)
  with pytest.raises(ValueError, match=r"weights.h5: unknown weights format '\.h5'"):
    load(unknown)
  corrupt = tmp_path / 'corrupt.safetensors'
  corrupt.write_bytes(b'not a safetensors file')
  with pytest.raises(ValueError, match='corrupt.safetensors: cannot read weights'):
    load(corrupt)
  # Without torch, a .pth is a clear instruction, not an ImportError traceback.
  pth = tmp_path / 'resnet50.pth'
  pth.write_bytes(b'\0')
  real_find_spec = pretrained.importlib.util.find_spec
  monkeypatch.setattr(pretrained.importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'torch' else real_find_spec(name, *a))
  with pytest.raises(ValueError, match='resnet50.pth: .*needs PyTorch.*safetensors'):
    load(pth)


# torchvision runs in a child process that never imports JAX: importing it loads torch._dynamo and
# triton, whose LLVM crashes a process that has jaxlib loaded (torch 2.14.1, seen in CI).
TORCHVISION_RESNET = r"""
import sys
import numpy as np
import torch
import torchvision
depth, pth, arrays = int(sys.argv[1]), sys.argv[2], sys.argv[3]
images = np.load(arrays)['images']
torch.manual_seed(depth)
net = getattr(torchvision.models, f'resnet{depth}')(weights=None).eval()
with torch.no_grad():
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.5, 0.5)
      module.running_var.uniform_(0.5, 2.0)
      module.weight.uniform_(0.5, 1.5)
      module.bias.uniform_(-0.5, 0.5)
  torch.save(net.state_dict(), pth)
  logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
state = net.state_dict()
np.savez(arrays, images=images, logits=logits, fc_weight=state['fc.weight'].numpy(),
         fc_bias=state['fc.bias'].numpy())
print(torchvision.__version__)
"""


@pytest.mark.skipif(importlib.util.find_spec('torchvision') is None,
                    reason='torchvision not installed')
@pytest.mark.parametrize('depth', [18, 50])
def test_import_reproduces_torchvision_logits(tmp_path, depth):
  # torchvision itself (when installed; it is optional): random weights, perturbed BN statistics
  # so eval-mode BN is not the identity, saved as a .pth, imported, and the ImageNet fc applied to
  # our pooled features. No weights are downloaded.
  path, arrays = tmp_path / f'resnet{depth}.pth', tmp_path / 'arrays.npz'
  images = random_images(*IMPORT_INPUT_HW)
  np.savez(arrays, images=images)
  child = subprocess.run([sys.executable, '-c', TORCHVISION_RESNET, str(depth), str(path),
                          str(arrays)], capture_output=True, text=True, timeout=300)
  assert child.returncode == 0, child.stderr[-3000:]
  with np.load(arrays) as f:
    expected, fc_weight, fc_bias = f['logits'], f['fc_weight'], f['fc_bias']

  backbone = models.ResNet(depth=depth)
  variables = random_variables(backbone, images)
  params, batch_stats, report = pretrained.load_pretrained(
      variables['params'], variables['batch_stats'], str(path))
  assert report['missing_model_keys'] == report['unmatched_file_keys'] == []
  assert {'fc.weight', 'fc.bias'} <= set(report['ignored'])
  features = backbone.apply({'params': params, 'batch_stats': batch_stats}, images)
  pooled = np.asarray(features).mean(axis=(1, 2))
  logits = pooled @ fc_weight.T + fc_bias
  max_abs = float(np.max(np.abs(logits - expected)))
  print(f'resnet{depth} vs torchvision {child.stdout.strip()}: max |logits diff| = '
        f'{max_abs:.2e}, max |logit| = {np.abs(expected).max():.2f}')
  assert max_abs < 1e-4 * max(1.0, np.abs(expected).max())
