"""BoT (Luo et al. 2019) on Market-1501, the benchmark its paper reports: R1 94.1 / mAP 85.7.

The recipe is configs/mot17_bot.py, key by key BoT's softmax_triplet.yml (ResNet-50, last
stride 1, BNNeck, 256x128, P16 x K4, label smoothing 0.1, random erasing 0.5, Adam 3.5e-4,
120 epochs, warmup 10 epochs); only the data differ. Convert the dataset first:

  python convert_market1501.py --input_dir=data/Market-1501-v15.09.15

Training evaluates query against gallery (Market's camera filter read from the file names, as
evaluate.py does) once per epoch and keeps the best checkpoint by that mAP; BoT evaluates every
40 epochs and keeps the last. On Market's 12,936 training images: 203 steps per epoch, 24,360 in
all, warmup 2,030 steps, decays at 8,120 and 14,210. The paper's figures assume ImageNet weights
(config.model.init_from) and no re-ranking.
"""

from configs import mot17_bot


def get_config():
  """Returns the BoT recipe on the Market-1501 conversion."""
  config = mot17_bot.get_config()
  config.data.root = 'data/Market-1501-v15.09.15/reid'
  config.data.image_dir = 'imgs'
  config.data.train_list = 'meta/train.txt'
  config.data.val_list = ''
  config.data.query_list = 'meta/query.txt'
  config.data.gallery_list = 'meta/gallery.txt'
  return config
