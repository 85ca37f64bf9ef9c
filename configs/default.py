"""Every knob of train.py, with defaults: MMDet's ReID recipe (reid_r50_8xb32-6e) for any data.

Other configs import this and override. One epoch is MMDet's (`epoch='mmdet'`): one 32-image
P x K sample per training-list line, i.e. ceil(lines * 32 / 256) steps of 256 images. Six epochs,
lr x0.1 from epoch 5, and a linear warmup of 0.32 epoch, which is MMDet's 1000 iterations on MOT17
train_80 and scales with the data, so the decay never falls inside it. Steps for some datasets:

  dataset (identities / images)        steps per epoch   warmup   decay at   total
  MOT17 train_80 (~380 / 25,000)                  3,125    1,000     15,625  18,750
  a custom set (50 / 2,000)                         250       80      1,250   1,500
  Market-1501 train (751 / 12,936)                1,617      517      8,085   9,702

configs/mot17.py is this recipe with MMDet's literal 1000-step warmup.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default configuration (the MMDet-style recipe on MOT17 paths)."""
  config = ml_collections.ConfigDict()

  # ---- Data ----
  config.data = ml_collections.ConfigDict()
  config.data.root = 'data/MOT17/reid'       # holds image_dir/ and the lists below
  config.data.image_dir = 'imgs'             # MMDet's data_prefix, relative to root
  config.data.train_list = 'meta/train_80.txt'  # '<path> <label>' lines, relative to root
  config.data.val_list = 'meta/val_20.txt'   # all-vs-all val list; '' disables evaluation
  # Query/gallery evaluation instead of val_list (Market-1501 style; camera filter from file names).
  config.data.query_list = ''
  config.data.gallery_list = ''
  config.data.image_size = (256, 128)        # (H, W); aspect ratio is not kept, as MMDet
  config.data.k = 4                          # images per identity; P = batch_size // k
  config.data.augment = ml_collections.ConfigDict()
  config.data.augment.flip = True            # horizontal flip with p=0.5
  config.data.augment.pad = 0                # pad then random crop back (BoT uses 10)
  config.data.augment.erasing_prob = 0.0     # random erasing (BoT uses 0.5)
  config.data.augment.erasing_area = (0.02, 0.4)   # erased fraction of the image area
  config.data.augment.erasing_aspect = (0.3, 3.33)  # erased rectangle's height / width
  config.data.augment.color_jitter = 0.0     # brightness/contrast/saturation in [1-s, 1+s]
  # Training classes; 0 derives them from the training list (a non-zero value must agree).
  config.num_classes = 0

  # ---- Batch and length ----
  config.batch_size = 256                    # global images per step = P x K, over all devices
  # What one epoch means for num_epochs/decay_epochs/warmup_epochs:
  #   'identities': every training identity once (ceil(num_ids / P) steps);
  #   'images': as many images as the training list has (ceil(num_lines / batch_size) steps,
  #             BoT/fast-reid's epoch);
  #   'mmdet': MMDet's epoch, one 32-image P x K sample per training-list line
  #            (ceil(num_lines * 32 / batch_size) steps; with batch_size 256 that is MMDet's
  #            iteration count on 8 GPUs x 32 images).
  config.epoch = 'mmdet'
  config.num_epochs = 6.0
  config.num_train_steps = 0                 # > 0 overrides num_epochs

  # ---- Model (models.create_model) ----
  config.model = ml_collections.ConfigDict()
  config.model.depth = 50                    # ResNet 18/34/50/101/152
  config.model.width = 64                    # base filters; tiny test models use 8
  config.model.last_stride = 2               # BoT uses 1
  config.model.head = 'linear'               # 'linear' (MMDet) or 'bnneck' (BoT)
  config.model.pooling = 'avg'               # 'avg' or 'gem' (learnable generalised mean)
  config.model.hidden_dim = 1024             # linear head
  config.model.embed_dim = 128               # linear head
  config.model.dtype = 'float32'             # compute dtype: 'float32' or 'bfloat16'
  config.model.init_from = ''                # local ImageNet weights (.pth/.safetensors/.npz);
                                             # empty: random init, and train.py warns

  # ---- Losses: ce_weight * CE + triplet_weight * batch-hard triplet ----
  config.loss = ml_collections.ConfigDict()
  config.loss.ce_weight = 1.0
  config.loss.label_smoothing = 0.0          # BoT uses 0.1
  config.loss.triplet_weight = 1.0
  config.loss.triplet_margin = 0.3           # relu(d_ap - d_an + margin), mined over the batch
  config.loss.triplet_soft_margin = False    # log(1 + exp(d_ap - d_an)) instead of the margin

  # ---- Optimizer (optax) ----
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'              # 'sgd', 'adam' (L2 like torch), 'adamw'
  config.optimizer.lr = 0.1                  # peak learning rate (after warmup)
  config.optimizer.momentum = 0.9            # sgd; 0 = plain SGD
  config.optimizer.nesterov = False          # sgd
  config.optimizer.b1 = 0.9                  # adam/adamw
  config.optimizer.b2 = 0.999                # adam/adamw
  config.optimizer.weight_decay = 1e-4       # L2 added to the gradient (adamw: decoupled)
  # False exempts BN and biases from weight decay: fast-reid's choice. MMDet and BoT decay all.
  config.optimizer.decay_bn_and_bias = True

  # ---- Learning-rate schedule ----
  config.schedule = ml_collections.ConfigDict()
  config.schedule.name = 'multistep'         # 'multistep' or 'cosine'
  config.schedule.warmup_steps = 0           # linear warmup; total = steps + epochs * steps/epoch
  config.schedule.warmup_epochs = 0.32       # = MMDet's 1000 iterations on MOT17 train_80
  config.schedule.warmup_factor = 1e-3       # warmup starts at lr * warmup_factor
  config.schedule.decay_epochs = (5.0,)      # multistep: lr *= decay_factor after each (after
                                             # the warmup, or train.py refuses the config)
  config.schedule.decay_factor = 0.1

  # ---- Evaluation ----
  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 0                # 0: once per epoch (and always at the end)
  config.eval.batch_size = 256               # global images per eval batch
  config.eval.normalize = False              # L2-normalise embeddings before distances
  config.eval.frame_gap = 0                  # > 0: also report the frame-gap protocol

  # ---- Logging and checkpoints ----
  config.log_every_steps = 50                # progress line, TensorBoard and metrics.jsonl
  config.checkpoint_every_steps = 1000       # also saved after each evaluation and at the end
  config.keep_checkpoints = 3                # the latest k, plus the best by val mAP
  config.seed = 0                            # initialisation, sampling and augmentation
  return config
