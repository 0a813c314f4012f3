"""Tiny-ImageNet-LT: real ImageNet photos (64x64), 202 classes, train long-tailed at IF 100 (480 .. 4 per
class), a balanced val split (20 per class) and a balanced test split (50 per class).

  python launch/train.py --config=configs/tiny_imagenet_lt.py:/tmp/tiny-imagenet-lt --workdir=DIR
  python launch/train.py --config=configs/tiny_imagenet_lt.py:/tmp/tiny-imagenet-lt,long --workdir=DIR
  python launch/train.py --config=configs/tiny_imagenet_lt.py:/tmp/tiny-imagenet-lt,full --workdir=DIR

The default is the CPU schedule used for the figures in docs/REPRODUCING.md: ResNet-8 on images resized
to 32x32, batch 128, 24 epochs for the naive and stage-1 backbones, then stage 2 chosen on the val split
(36-56 minutes in all on 2 cores, as fast as the machine runs; 20-27 for BWLM alone with
--config.stages=stage1,stage2). `,long` is the same at 72 epochs a backbone, 3x the time (about 45 min a
backbone on 2 cores): ahead on val with the paper's recipe and with mixup (docs/REPRODUCING.md, "Backbone
recipes chosen on validation"). `,full` is the schedule for a GPU: ResNet-32 at 64x64 with the paper's
CIFAR recipe (batch 64, SGD 0.9, cosine from 0.01, 310 + 10 epochs, stage-1 weight decay 5e-3).
The folder layout is ROOT/{train,val,test}/<wnid>/*.JPEG; launch/make_tiny_imagenet_lt.py builds it from Tiny
ImageNet (docs/REPRODUCING.md names the source and the file-list hash).
"""

from bwlm_jax.config import base_config


def get_config(arg: str = ''):
  root, _, schedule = arg.partition(',')
  if schedule not in ('', 'cpu', 'long', 'full'):
    raise ValueError(f'configs/tiny_imagenet_lt.py takes ROOT[,cpu|,long|,full], got schedule {schedule!r}.')
  config = base_config()
  config.data.name = 'folder'
  config.data.folder = root or None
  if schedule == 'full':
    config.data.image_size = 64
    config.model.name = 'resnet32'
    return config
  # CPU schedule, chosen on the val split (docs/REPRODUCING.md: the backbone weight decay and the epoch
  # comparisons): the usual short-schedule SGD recipe (lr 0.1, weight decay 5e-4, batch 128) for both
  # backbones, 24 epochs each (72 with `,long`).
  config.data.image_size = 32
  config.model.name = 'resnet8'
  config.batch_size = 128
  for stage in (config.naive, config.stage1):
    stage.epochs = 72 if schedule == 'long' else 24
    stage.learning_rate = 0.1
    stage.weight_decay = 5e-4
  config.checkpoint_every_steps = 500
  return config
