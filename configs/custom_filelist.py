"""A custom dataset in MMDet's Filelist layout (data/Filelist/{imgs,meta/train.txt,meta/val.txt}).

Labels in the lists may be any non-negative integers; the number of classes comes from the
training list. Change only paths (and, if you like, the recipe below).
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
