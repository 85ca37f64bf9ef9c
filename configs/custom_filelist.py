"""A custom dataset in MMDet's Filelist layout (data/Filelist/{imgs,meta/train.txt,meta/val.txt}).

Labels in the lists may be any non-negative integers; the number of classes comes from the
training list. Change only paths (and, if you like, the recipe below).

The recipe is configs/default.py: MMDet's, whose epoch is one 32-image sample per training line,
with its warmup in epochs so it scales with the data. A 50-identity / 2,000-image set gets 250
steps per epoch of 256 images (P64 x K4; with fewer than 64 identities a batch repeats some, as
MMDet's sampler does), an 80-step warmup, the decay at step 1,250 and 1,500 steps in all.
"""

from configs import default


def get_config():
  """Returns the default recipe on data/Filelist."""
  config = default.get_config()
  config.data.root = 'data/Filelist'
  config.data.image_dir = 'imgs'
  config.data.train_list = 'meta/train.txt'
  config.data.val_list = 'meta/val.txt'
  config.num_classes = 0
  return config
