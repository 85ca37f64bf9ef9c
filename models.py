"""ResNet backbones and ReID heads in Flax Linen, input normalisation and the test-time embedding.

The backbone mirrors torchvision's ResNet (v1.5: the stride sits on the 3x3 conv of a bottleneck)
with the same layer order and module names, so a torchvision or timm state dict maps one to one
(pretrained.py).
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

# ---- Backbone ----

# depth -> (block kind, blocks per stage), as torchvision's resnet18 ... resnet152.
RESNET_LAYOUTS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') = untruncated N(0, 2/fan_out).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  # Explicit symmetric padding as torch does; 'SAME' pads (0, 1) on even inputs with stride 2.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=conv_init, name=name)


def _batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # No axis_name: under a jit-sharded step the batch axis is global, so statistics already are.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      param_dtype=jnp.float32, name=name)


class ResidualBlock(nn.Module):
  """torchvision BasicBlock ('basic') or Bottleneck ('bottleneck'), stride on the 3x3 conv."""
  kind: str
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_features = self.planes * EXPANSION[self.kind]
    if self.kind == 'basic':
      y = _conv(self.planes, 3, self.stride, self.dtype, 'conv1')(x)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
      y = _conv(self.planes, 3, 1, self.dtype, 'conv2')(y)
      y = _batch_norm(train, self.dtype, 'bn2')(y)
    else:
      y = _conv(self.planes, 1, 1, self.dtype, 'conv1')(x)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn1')(y))
      y = _conv(self.planes, 3, self.stride, self.dtype, 'conv2')(y)
      y = nn.relu(_batch_norm(train, self.dtype, 'bn2')(y))
      y = _conv(out_features, 1, 1, self.dtype, 'conv3')(y)
      y = _batch_norm(train, self.dtype, 'bn3')(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = _conv(out_features, 1, self.stride, self.dtype, 'downsample_conv')(x)
      shortcut = _batch_norm(train, self.dtype, 'downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision ResNet without avgpool/fc: NHWC images -> NHWC feature map (stride 32, or 16)."""
  depth: int = 50
  width: int = 64
  last_stride: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    kind, blocks_per_stage = RESNET_LAYOUTS[self.depth]
    x = images.astype(self.dtype)
    x = _conv(self.width, 7, 2, self.dtype, 'conv1')(x)
    x = nn.relu(_batch_norm(train, self.dtype, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # pads with -inf, as torch
    for stage, num_blocks in enumerate(blocks_per_stage):
      stage_stride = 1 if stage == 0 else (self.last_stride if stage == 3 else 2)
      for index in range(num_blocks):
        x = ResidualBlock(kind, self.width * 2**stage, stage_stride if index == 0 else 1,
                          self.dtype, name=f'layer{stage + 1}_{index}')(x, train)
    return x


# ---- Pooling and heads ----


class GeM(nn.Module):
  """Generalised mean pooling over H, W with learnable exponent p (fast-reid: p=3, eps=1e-6)."""
  init_p: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.param('p', nn.initializers.constant(self.init_p), (1,), jnp.float32)
    x = jnp.maximum(x.astype(jnp.float32), self.eps)
    return jnp.mean(x**p, axis=(1, 2)) ** (1.0 / p)


@flax.struct.dataclass
class ReIDOutput:
  embedding: jax.Array        # test-time feature (not normalised)
  triplet_feature: jax.Array  # the feature the triplet loss uses
  logits: jax.Array | None    # float32; None when num_classes == 0


# MMDet's LinearReIDHead: every Linear N(0, 0.01), bias 0. BoT's classifier: N(0, 0.001).
linear_head_init = nn.initializers.normal(0.01)
bnneck_classifier_init = nn.initializers.normal(0.001)


def _head_batch_norm(train: bool, name: str, use_bias: bool = True) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, use_bias=use_bias,
                      dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class LinearHead(nn.Module):
  """MMDet's LinearReIDHead: FC+BN+ReLU -> FC = embedding; BN -> FC = logits."""
  num_classes: int
  hidden_dim: int = 1024
  embed_dim: int = 128

  @nn.compact
  def __call__(self, pooled: jax.Array, train: bool = False) -> ReIDOutput:
    x = nn.Dense(self.hidden_dim, kernel_init=linear_head_init, name='fc_hidden')(pooled)
    x = nn.relu(_head_batch_norm(train, 'bn_hidden')(x))
    embedding = nn.Dense(self.embed_dim, kernel_init=linear_head_init, name='fc_embed')(x)
    logits = None
    if self.num_classes > 0:
      x = _head_batch_norm(train, 'bn_embed')(embedding)
      logits = nn.Dense(self.num_classes, kernel_init=linear_head_init, name='classifier')(x)
    return ReIDOutput(embedding=embedding, triplet_feature=embedding, logits=logits)


class BNNeckHead(nn.Module):
  """BoT's BNNeck: triplet on the pooled feature, bias-free BN -> bias-free classifier for CE."""
  num_classes: int

  @nn.compact
  def __call__(self, pooled: jax.Array, train: bool = False) -> ReIDOutput:
    # A BN bias would shift the features the CE loss sees away from the triplet geometry (BoT).
    normalised = _head_batch_norm(train, 'bn', use_bias=False)(pooled)
    logits = None
    if self.num_classes > 0:
      logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=bnneck_classifier_init,
                        name='classifier')(normalised)
    return ReIDOutput(embedding=normalised, triplet_feature=pooled, logits=logits)


# ---- Full model ----

HEADS = ('linear', 'bnneck')
POOLINGS = ('avg', 'gem')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


class ReIDModel(nn.Module):
  """ResNet backbone + global pooling + ReID head; params {'backbone', ['gem'], 'head'}."""
  num_classes: int
  depth: int = 50               # 18/34/50/101/152
  width: int = 64
  last_stride: int = 2
  head: str = 'linear'          # 'linear' | 'bnneck'
  pooling: str = 'avg'          # 'avg' | 'gem'
  hidden_dim: int = 1024        # linear head
  embed_dim: int = 128          # linear head
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> ReIDOutput:
    """images: float NHWC, ImageNet-normalised RGB, any size; heads run in float32."""
    features = ResNet(self.depth, self.width, self.last_stride, self.dtype, name='backbone')(
        images, train)
    # Global pooling (not MMDet's fixed 8x4 kernel), so any input size works.
    if self.pooling == 'gem':
      pooled = GeM(name='gem')(features)
    else:
      pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))
    if self.head == 'linear':
      output = LinearHead(self.num_classes, self.hidden_dim, self.embed_dim, name='head')(
          pooled, train)
    else:
      output = BNNeckHead(self.num_classes, name='head')(pooled, train)
    logits = None if output.logits is None else output.logits.astype(jnp.float32)
    return output.replace(logits=logits)


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> ReIDModel:
  """Builds a ReIDModel from the `model` sub-config; an unknown value is a ValueError naming it."""
  defaults = {field: getattr(ReIDModel, field) for field in (
      'depth', 'width', 'last_stride', 'head', 'pooling', 'hidden_dim', 'embed_dim')}
  values = {field: config.get(field, default) for field, default in defaults.items()}
  allowed = {'depth': tuple(RESNET_LAYOUTS), 'last_stride': (1, 2), 'head': HEADS,
             'pooling': POOLINGS}
  for field, options in allowed.items():
    if values[field] not in options:
      raise ValueError(f'config.model.{field} must be one of {options}, got {values[field]!r}')
  for field in ('width', 'hidden_dim', 'embed_dim'):
    if not isinstance(values[field], int) or values[field] <= 0:
      raise ValueError(f'config.model.{field} must be a positive integer, got {values[field]!r}')
  dtype_name = config.get('dtype', 'float32')
  if dtype_name not in DTYPES:
    raise ValueError(f'config.model.dtype must be one of {tuple(DTYPES)}, got {dtype_name!r}')
  if num_classes < 0:
    raise ValueError(f'num_classes must be >= 0, got {num_classes}')
  return ReIDModel(num_classes=num_classes, dtype=DTYPES[dtype_name], **values)


# ---- Input normalisation and the test-time embedding ----

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


def normalize_images(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 NHWC RGB -> (x - ImageNet mean) / std in `dtype` (on device, inside a jitted step)."""
  mean = jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32)
  inv_std = 1.0 / jnp.asarray(IMAGENET_STD_RGB, jnp.float32)
  return ((images.astype(jnp.float32) - mean) * inv_std).astype(dtype)


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / max(||x||, 1e-12) over the last axis."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def embed(model: 'ReIDModel', variables: Any, images: jax.Array, *, flip_tta: bool = False,
          normalize: bool = False) -> jax.Array:
  """float32 test-time embeddings of uint8 NHWC RGB images, as evaluation and trackers use them.

  flip_tta averages each image's embedding with its mirror's; normalize L2-normalises (after).
  """
  x = normalize_images(images, model.dtype)
  embedding = model.apply(variables, x, train=False).embedding.astype(jnp.float32)
  if flip_tta:
    flipped = model.apply(variables, x[:, :, ::-1], train=False).embedding
    embedding = (embedding + flipped.astype(jnp.float32)) / 2
  return l2_normalize(embedding) if normalize else embedding
