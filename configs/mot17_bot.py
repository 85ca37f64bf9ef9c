"""BoT ("Bag of Tricks", Luo et al. 2019; reid-strong-baseline's softmax_triplet.yml) on MOT17.

Key by key as BoT's code: ResNet-50 with last stride 1 and BNNeck, CE with label smoothing 0.1 +
batch-hard triplet (margin 0.3), P16 x K4, 256x128, flip, pad 10 + random crop, random erasing 0.5,
Adam 3.5e-4 with weight decay 5e-4 on every parameter (BoT's WEIGHT_DECAY and WEIGHT_DECAY_BIAS
are both 5e-4; exempting BN and biases is fast-reid's choice, not BoT's), 120 epochs, lr x0.1 at
epochs 40 and 70, linear warmup over 10 epochs from lr x 0.01, test features after the BN and
L2-normalised.

BoT's epochs are epochs of its RandomIdentitySampler, which covers every training image about once
in P16 x K4 batches: `epoch='images'` (ceil(images / 64) steps). On MOT17 train_80 (~25,000
images): 391 steps per epoch, 46,920 in all, warmup 3,910 steps, decays at 15,640 and 27,370.

Deliberate differences: batches come from our P x K stream (BoT's sampler only sets the epoch
length here), and the warmup ramps every step where BoT's WarmupMultiStepLR steps once per epoch.
BoT starts from ImageNet weights: set config.model.init_from (docs/training.md: ImageNet weights).
"""

from configs import default


def get_config():
  """Returns the BoT recipe on the MOT17 conversion."""
  config = default.get_config()
  config.batch_size = 64                # P16 x K4
  config.epoch = 'images'
  config.num_epochs = 120.0
  config.model.last_stride = 1
  config.model.head = 'bnneck'
  config.model.pooling = 'avg'
  config.loss.label_smoothing = 0.1
  config.data.augment.pad = 10
  config.data.augment.erasing_prob = 0.5
  config.optimizer.name = 'adam'
  config.optimizer.lr = 3.5e-4
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_bn_and_bias = True  # BoT: WEIGHT_DECAY_BIAS = WEIGHT_DECAY = 5e-4
  config.schedule.warmup_steps = 0
  config.schedule.warmup_epochs = 10.0
  config.schedule.warmup_factor = 0.01   # BoT's WARMUP_FACTOR
  config.schedule.decay_epochs = (40.0, 70.0)
  config.eval.normalize = True
  config.eval.every_steps = 0             # once per epoch
  return config
