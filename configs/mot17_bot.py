"""BoT ("Bag of Tricks", Luo et al. 2019) on MOT17: last stride 1, BNNeck, label smoothing,
random erasing, pad + crop, Adam 3.5e-4 with a 10-epoch warmup, no weight decay on BN and bias.

BoT's 120 epochs (decay at 40 and 70) are epochs of its RandomIdentitySampler, which covers every
training image about once in P16 x K4 batches: `epoch='images'` (ceil(images / 64) steps).
Only the schedule's epoch length follows BoT; batches still come from our P x K stream.
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
  config.optimizer.decay_bn_and_bias = False
  config.schedule.warmup_steps = 0
  config.schedule.warmup_epochs = 10.0
  config.schedule.warmup_factor = 0.1
  config.schedule.decay_epochs = (40.0, 70.0)
  config.eval.normalize = True
  config.eval.every_steps = 0             # once per epoch
  return config
