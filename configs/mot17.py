"""MMDet's reid_r50_8xb32-6e_mot17train80_test-mot17val20 recipe, key by key.

MMDet trains 6 epochs on 8 GPUs x 32 images (one P8 x K4 sample per GPU), where one epoch is one
32-image sample per line of train_80.txt, i.e. len(train_80.txt) / 8 iterations of 256 images.
Here the same is `epoch='mmdet'` with a global batch of 256 = P64 x K4: one step per 8 lines,
6 epochs, lr x0.1 after 5 of the 6 epochs (from step 5 * steps_per_epoch on), linear warmup over
the first 1000 steps from lr x 1e-3 (full rate at step 999, as MMEngine's LinearLR). SGD 0.1,
momentum 0.9, weight decay 1e-4 on every parameter. On MOT17 train_80 (~25,000 lines): 3,125 steps
per epoch, 18,750 in all, decay at step 15,625.

Deliberate differences: identities are P-sampled per epoch order instead of MMDet's random anchors,
and the triplet loss mines over all 256 images instead of each GPU's 32. MMDet starts from
ImageNet weights: set config.model.init_from (docs/training.md: ImageNet weights).
"""

from configs import default


def get_config():
  """Returns the MMDet MOT17 recipe."""
  config = default.get_config()
  config.data.root = 'data/MOT17/reid'
  config.data.train_list = 'meta/train_80.txt'
  config.data.val_list = 'meta/val_20.txt'
  config.batch_size = 256
  config.epoch = 'mmdet'
  config.num_epochs = 6.0
  config.schedule.warmup_steps = 1000   # MMDet's LinearLR(end=1000, by_epoch=False)
  config.schedule.warmup_epochs = 0.0
  config.schedule.decay_epochs = (5.0,)
  config.model.init_from = ''  # your ImageNet ResNet-50 file, docs/training.md
  config.checkpoint_every_steps = 1000
  return config
