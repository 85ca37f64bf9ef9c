"""The demo: a small ResNet on synthetic_mot.py output, trained on a CPU in minutes.

    python synthetic_mot.py --output_dir=data/SYNTH17
    python convert_mot17.py --input_dir=data/SYNTH17
    python train.py --config=configs/synthetic.py --workdir=runs/synthetic
"""

from configs import default


def get_config():
  """Returns the CPU demo recipe."""
  config = default.get_config()
  config.data.root = 'data/SYNTH17/reid'
  config.data.image_size = (128, 64)
  config.data.augment.pad = 4
  config.data.augment.erasing_prob = 0.3
  config.batch_size = 64                  # P16 x K4
  config.epoch = 'identities'
  config.num_epochs = 80.0               # 720 steps on the default 144 train ids
  config.model.depth = 18
  config.model.width = 32
  config.model.last_stride = 1
  config.model.head = 'bnneck'
  config.loss.label_smoothing = 0.1
  config.optimizer.name = 'adam'
  config.optimizer.lr = 1e-3
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_bn_and_bias = False
  config.schedule.name = 'cosine'
  config.schedule.warmup_steps = 50
  config.schedule.warmup_epochs = 0.0
  config.schedule.warmup_factor = 0.1
  config.eval.batch_size = 256
  config.eval.normalize = True
  config.eval.every_steps = 180
  config.eval.frame_gap = 30              # also score without same-track neighbours
  config.log_every_steps = 45
  config.checkpoint_every_steps = 200
  return config
