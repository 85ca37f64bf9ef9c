"""Tests for models.py: torchvision-equal backbones, ReID heads, the test-time embedding."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
from jax import lax

import models

# ---- An independent torchvision-layout ResNet in NumPy/lax (NCHW, OIHW) ----

# torchvision's resnet{depth}: (bottleneck?, blocks per stage), written out again on purpose.
TORCHVISION_LAYOUTS = {18: (False, [2, 2, 2, 2]), 50: (True, [3, 4, 6, 3])}


def block_strides(depth: int, last_stride: int = 2):
  """Yields (stage, index, stride) for every residual block of a torchvision ResNet."""
  _, blocks = TORCHVISION_LAYOUTS[depth]
  for stage, num_blocks in enumerate(blocks):
    for index in range(num_blocks):
      first_stride = 1 if stage == 0 else (last_stride if stage == 3 else 2)
      yield stage, index, first_stride if index == 0 else 1


def torchvision_state_dict(depth: int, width: int, seed: int = 0, num_classes: int = 10) -> dict:
  """A random state dict with torchvision's key names and OIHW shapes, fc and counters included."""
  rng = np.random.default_rng(seed)
  bottleneck, _ = TORCHVISION_LAYOUTS[depth]
  expansion = 4 if bottleneck else 1
  state = {}

  def conv(name, out_channels, in_channels, kernel):
    std = np.sqrt(2.0 / (in_channels * kernel * kernel))  # keeps activations O(1) through depth
    state[f'{name}.weight'] = rng.normal(
        0, std, (out_channels, in_channels, kernel, kernel)).astype(np.float32)

  def bn(name, channels, gamma=(0.5, 1.5)):
    state[f'{name}.weight'] = rng.uniform(*gamma, channels).astype(np.float32)
    state[f'{name}.bias'] = rng.normal(0, 0.1, channels).astype(np.float32)
    state[f'{name}.running_mean'] = rng.normal(0, 0.1, channels).astype(np.float32)
    state[f'{name}.running_var'] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    state[f'{name}.num_batches_tracked'] = np.array(7, np.int64)

  # A small gamma on each residual branch's last BN keeps activations O(1) through the
  # un-normalised (random running statistics) stack, so absolute differences stay meaningful.
  small_gamma = (0.1, 0.3)
  conv('conv1', width, 3, 7)
  bn('bn1', width)
  in_channels = width
  for stage, index, stride in block_strides(depth):
    planes, prefix = width * 2**stage, f'layer{stage + 1}.{index}'
    if bottleneck:
      conv(f'{prefix}.conv1', planes, in_channels, 1)
      bn(f'{prefix}.bn1', planes)
      conv(f'{prefix}.conv2', planes, planes, 3)
      bn(f'{prefix}.bn2', planes)
      conv(f'{prefix}.conv3', planes * expansion, planes, 1)
      bn(f'{prefix}.bn3', planes * expansion, gamma=small_gamma)
    else:
      conv(f'{prefix}.conv1', planes, in_channels, 3)
      bn(f'{prefix}.bn1', planes)
      conv(f'{prefix}.conv2', planes, planes, 3)
      bn(f'{prefix}.bn2', planes, gamma=small_gamma)
    if stride != 1 or in_channels != planes * expansion:
      conv(f'{prefix}.downsample.0', planes * expansion, in_channels, 1)
      bn(f'{prefix}.downsample.1', planes * expansion)
    in_channels = planes * expansion
  state['fc.weight'] = rng.normal(0, 0.01, (num_classes, in_channels)).astype(np.float32)
  state['fc.bias'] = np.zeros(num_classes, np.float32)
  return state


def reference_backbone(state: dict, images_nchw: jax.Array, depth: int) -> jax.Array:
  """torchvision's eval-mode ResNet forward (no avgpool/fc) on the raw OIHW/NCHW arrays."""
  bottleneck, _ = TORCHVISION_LAYOUTS[depth]

  def conv(x, name, stride, pad):
    return lax.conv_general_dilated(x, jnp.asarray(state[f'{name}.weight']), (stride, stride),
                                    [(pad, pad), (pad, pad)], precision=lax.Precision.HIGHEST,
                                    dimension_numbers=('NCHW', 'OIHW', 'NCHW'))

  def bn(x, name):
    scale = state[f'{name}.weight'] / np.sqrt(state[f'{name}.running_var'] + 1e-5)
    shift = state[f'{name}.bias'] - state[f'{name}.running_mean'] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]

  relu = lambda x: jnp.maximum(x, 0)
  x = relu(bn(conv(jnp.asarray(images_nchw), 'conv1', 2, 3), 'bn1'))
  x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                        [(0, 0), (0, 0), (1, 1), (1, 1)])
  for stage, index, stride in block_strides(depth):
    prefix = f'layer{stage + 1}.{index}'
    if bottleneck:
      y = relu(bn(conv(x, f'{prefix}.conv1', 1, 0), f'{prefix}.bn1'))
      y = relu(bn(conv(y, f'{prefix}.conv2', stride, 1), f'{prefix}.bn2'))
      y = bn(conv(y, f'{prefix}.conv3', 1, 0), f'{prefix}.bn3')
    else:
      y = relu(bn(conv(x, f'{prefix}.conv1', stride, 1), f'{prefix}.bn1'))
      y = bn(conv(y, f'{prefix}.conv2', 1, 1), f'{prefix}.bn2')
    if f'{prefix}.downsample.0.weight' in state:
      x = bn(conv(x, f'{prefix}.downsample.0', stride, 0), f'{prefix}.downsample.1')
    x = relu(y + x)
  return x


# ---- Helpers ----

WIDTH = 8
# Odd, non-multiple-of-32 size: catches asymmetric padding ('SAME' vs torch's symmetric pads).
IMPORT_INPUT_HW = (70, 45)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def init_shapes(model, height: int = 256, width: int = 128):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, height, width, 3))))


def init(model, images):
  """model.init, jitted, with an 'rbg' key: threefry init programs take ~15 s to compile on CPU."""
  return jax.jit(model.init)(jax.random.key(0, impl='rbg'), images)


def random_variables(module, images, seed: int = 3):
  """Variables of the right shapes filled in NumPy (instant), for tests that overwrite them."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.key(0), images)
  return jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(s.dtype), shapes)


def random_images(height: int, width: int, batch: int = 2, seed: int = 1) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(batch, height, width, 3)).astype(np.float32)


@functools.cache
def backbone_case(depth: int):
  """(ResNet, its initial variables, jitted eval apply, state dict, reference output NHWC)."""
  backbone = models.ResNet(depth=depth, width=WIDTH)
  images = random_images(*IMPORT_INPUT_HW)
  variables = random_variables(backbone, images)
  apply = jax.jit(functools.partial(backbone.apply, train=False))
  state = torchvision_state_dict(depth, WIDTH)
  reference = jax.jit(functools.partial(reference_backbone, state, depth=depth))
  expected = np.asarray(reference(images.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1)
  return backbone, variables, apply, state, expected


def save(state: dict, path, fmt: str):
  if fmt == 'safetensors':
    safetensors.numpy.save_file(state, str(path))
  elif fmt == 'npz':
    np.savez(path, **state)
  else:
    torch = pytest.importorskip('torch')
    torch.save({key: torch.from_numpy(np.array(value)) for key, value in state.items()}, path)


def embed_and_outputs(model):
  return lambda variables, images: (models.l2_normalize(model.apply(variables, images).embedding),
                                    model.apply(variables, images))


def small_model(**overrides) -> models.ReIDModel:
  fields = dict(num_classes=5, depth=18, width=WIDTH, hidden_dim=32, embed_dim=16)
  fields.update(overrides)
  return models.ReIDModel(**fields)


@functools.cache
def _init_small_cached(**overrides):
  return init(small_model(**overrides), random_images(64, 32, batch=4))


def init_small(**overrides):
  """Initial variables of small_model(**overrides), shared between tests; a fresh copy each call."""
  return jax.tree.map(lambda leaf: leaf, _init_small_cached(**overrides))


# ---- Backbone structure ----

# torchvision's parameter counts (conv weights + BN weight/bias) minus the 1000-way fc.
@pytest.mark.parametrize('depth, expected', [(18, 11_176_512), (34, 21_284_672),
                                             (50, 23_508_032), (101, 42_500_160)])
def test_backbone_parameter_count_equals_torchvision(depth, expected):
  variables = init_shapes(models.ReIDModel(num_classes=0, depth=depth))
  assert count(variables['params']['backbone']) == expected
  # Running statistics live apart from params, as torch buffers do (not counted as parameters).
  assert count(variables['batch_stats']['backbone']) > 0
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_backbone_names_mirror_torchvision():
  backbone = init_shapes(models.ReIDModel(num_classes=0, depth=50))['params']['backbone']
  assert {'conv1', 'bn1', 'layer1_0', 'layer4_2'} <= set(backbone)
  assert 'layer4_3' not in backbone
  assert set(backbone['layer1_0']) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3',
                                       'downsample_conv', 'downsample_bn'}
  assert 'downsample_conv' not in backbone['layer1_1']
  # v1.5: layer2's first bottleneck keeps the 1x1 conv1 and strides on the 3x3 conv2.
  assert backbone['layer2_0']['conv1']['kernel'].shape == (1, 1, 256, 128)
  assert backbone['layer2_0']['conv2']['kernel'].shape == (3, 3, 128, 128)


@pytest.mark.parametrize('height, width', [(256, 128), (384, 128), (224, 224)])
@pytest.mark.parametrize('last_stride', [2, 1])
def test_backbone_output_shape(height, width, last_stride):
  backbone = models.ResNet(depth=50, width=WIDTH, last_stride=last_stride)
  images = jax.ShapeDtypeStruct((2, height, width, 3), jnp.float32)
  variables = jax.eval_shape(backbone.init, jax.random.key(0), images)
  features = jax.eval_shape(backbone.apply, variables, images)
  stride = 32 if last_stride == 2 else 16
  assert features.shape == (2, height // stride, width // stride, WIDTH * 8 * 4)


@pytest.mark.parametrize('height, width', [(256, 128), (384, 128), (224, 224)])
@pytest.mark.parametrize('head', ['linear', 'bnneck'])
def test_model_output_shapes_at_any_input_size(height, width, head):
  model = models.ReIDModel(num_classes=7, depth=50, width=WIDTH, head=head)
  images = jax.ShapeDtypeStruct((3, height, width, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  output = jax.eval_shape(model.apply, variables, images)
  embed_dim = 128 if head == 'linear' else WIDTH * 8 * 4
  assert output.embedding.shape == (3, embed_dim)
  assert output.logits.shape == (3, 7) and output.logits.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
  images = random_images(64, 32, batch=4)
  model32 = small_model(head='bnneck')
  model16 = small_model(head='bnneck', dtype=jnp.bfloat16)
  shapes16 = jax.eval_shape(model16.init, jax.random.key(0), images)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes16))
  variables = init_small(head='bnneck')
  features16 = jax.eval_shape(models.ResNet(depth=18, width=WIDTH, dtype=jnp.bfloat16).apply,
                              {k: v['backbone'] for k, v in variables.items()}, images)
  assert features16.dtype == jnp.bfloat16
  e32, out32 = jax.jit(embed_and_outputs(model32))(variables, images)
  e16, out16 = jax.jit(embed_and_outputs(model16))(variables, images)
  assert out16.logits.dtype == e16.dtype == jnp.float32
  scale = np.abs(out32.embedding).max()
  np.testing.assert_allclose(out16.embedding, out32.embedding, atol=0.05 * scale)
  np.testing.assert_allclose(out16.logits, out32.logits, atol=0.05 * np.abs(out32.logits).max())
  assert np.min(np.sum(np.asarray(e32) * np.asarray(e16), axis=-1)) > 0.99  # cosine


# ---- Heads ----


def test_linear_head_outputs():
  model = small_model(head='linear')
  images = random_images(64, 32, batch=4)
  variables = init_small(head='linear')
  head = variables['params']['head']
  assert head['fc_hidden']['kernel'].shape == (WIDTH * 8, 32)
  assert head['fc_embed']['kernel'].shape == (32, 16)
  assert head['classifier']['kernel'].shape == (16, 5)
  output = model.apply(variables, images)
  assert output.embedding.shape == (4, 16) and output.logits.shape == (4, 5)
  # MMDet: the 128-d (here 16-d) pre-BN feature is both the embedding and the triplet feature.
  np.testing.assert_array_equal(output.triplet_feature, output.embedding)
  embedded = models.l2_normalize(output.embedding)
  np.testing.assert_allclose(np.linalg.norm(embedded, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(
      embedded, output.embedding / np.linalg.norm(output.embedding, axis=-1, keepdims=True),
      rtol=1e-5, atol=1e-6)


def test_bnneck_head_outputs_and_train_statistics():
  model = small_model(head='bnneck')
  images = random_images(64, 32, batch=4)
  variables = init_small(head='bnneck')
  head = variables['params']['head']
  assert set(head['bn']) == {'scale'}  # BN without bias
  assert set(head['classifier']) == {'kernel'}  # classifier without bias
  output = model.apply(variables, images)
  assert output.triplet_feature.shape == (4, WIDTH * 8) and output.logits.shape == (4, 5)
  # Eval: the embedding is the triplet feature through BN's running statistics (still 0 / 1).
  np.testing.assert_allclose(output.embedding, output.triplet_feature / np.sqrt(1 + 1e-5),
                             rtol=1e-5)
  output, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
  # Train: batch statistics; running mean moves 10% toward the batch mean (torch momentum 0.1).
  np.testing.assert_allclose(output.embedding.mean(axis=0), 0.0, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['head']['bn']['mean'],
                             0.1 * np.asarray(output.triplet_feature).mean(axis=0), rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize('head', ['linear', 'bnneck'])
def test_no_classes_gives_embedding_only_model(head):
  model = small_model(head=head, num_classes=0)
  images = random_images(64, 32, batch=4)
  variables = init_small(head=head, num_classes=0)
  assert 'classifier' not in variables['params']['head']
  output = model.apply(variables, images)
  assert output.logits is None
  embedded = models.l2_normalize(output.embedding)
  np.testing.assert_allclose(np.linalg.norm(embedded, axis=-1), 1.0, rtol=1e-5)


def test_embed_normalises_pixels_flips_and_l2_normalises():
  model = small_model(head='bnneck')
  variables = init_small(head='bnneck')
  pixels = np.random.default_rng(3).integers(0, 256, (4, 64, 32, 3), dtype=np.uint8)
  x = models.normalize_images(jnp.asarray(pixels))
  raw = model.apply(variables, x).embedding
  np.testing.assert_allclose(models.embed(model, variables, pixels), raw, rtol=1e-5, atol=1e-6)
  mirror = model.apply(variables, x[:, :, ::-1]).embedding
  flipped = models.embed(model, variables, pixels, flip_tta=True, normalize=True)
  expected = (raw + mirror) / 2
  expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  assert flipped.dtype == jnp.float32
  np.testing.assert_allclose(flipped, expected, rtol=1e-5, atol=1e-6)


def test_normalize_images_hand_computed():
  images = jnp.asarray(np.array([0, 128, 255], np.uint8).reshape(1, 1, 1, 3))
  expected = [(0 - 123.675) / 58.395, (128 - 116.28) / 57.12, (255 - 103.53) / 57.375]
  out = models.normalize_images(images)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out).reshape(3), expected, rtol=1e-6)
  assert models.normalize_images(images, jnp.bfloat16).dtype == jnp.bfloat16


def test_gem_with_p_one_equals_average_pooling():
  features = np.abs(np.random.default_rng(0).normal(size=(2, 4, 3, 6))).astype(np.float32) + 0.01
  gem = models.GeM()
  variables = gem.init(jax.random.key(0), features)
  np.testing.assert_allclose(variables['params']['p'], [3.0])
  pooled = gem.apply({'params': {'p': jnp.array([1.0])}}, features)
  np.testing.assert_allclose(pooled, features.mean(axis=(1, 2)), rtol=1e-5)
  # p=3 is a different (larger) generalised mean: the parameter is actually used.
  assert np.all(gem.apply(variables, features) > features.mean(axis=(1, 2)))

  # In the full model: GeM with p=1 gives the same outputs as the 'avg' model (up to eps=1e-6).
  images = random_images(64, 32, batch=4)
  avg_model, gem_model = small_model(head='bnneck'), small_model(head='bnneck', pooling='gem')
  variables = init_small(head='bnneck', pooling='gem')
  variables['params']['gem']['p'] = jnp.array([1.0])
  avg_variables = {**variables, 'params': {k: v for k, v in variables['params'].items()
                                           if k != 'gem'}}
  np.testing.assert_allclose(gem_model.apply(variables, images).triplet_feature,
                             avg_model.apply(avg_variables, images).triplet_feature,
                             rtol=1e-4, atol=1e-5)


# ---- create_model ----


def test_create_model_reads_config():
  config = ml_collections.ConfigDict(dict(
      depth=18, width=16, last_stride=1, head='bnneck', pooling='gem', hidden_dim=64, embed_dim=32,
      dtype='bfloat16', init_from=''))
  model = models.create_model(config, num_classes=9)
  assert (model.depth, model.width, model.last_stride, model.head, model.pooling) == (
      18, 16, 1, 'bnneck', 'gem')
  assert (model.num_classes, model.hidden_dim, model.embed_dim) == (9, 64, 32)
  assert model.dtype == jnp.bfloat16


@pytest.mark.parametrize('field, value', [
    ('depth', 42), ('head', 'arcface'), ('pooling', 'max'), ('dtype', 'float16'),
    ('last_stride', 3), ('width', 0)])
def test_create_model_rejects_unknown_values_naming_the_field(field, value):
  config = ml_collections.ConfigDict(dict(
      depth=50, width=64, last_stride=2, head='linear', pooling='avg', hidden_dim=1024,
      embed_dim=128, dtype='float32'))
  config[field] = value
  with pytest.raises(ValueError, match=field):
    models.create_model(config, num_classes=3)
