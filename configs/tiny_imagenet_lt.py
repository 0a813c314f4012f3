"""Tiny-ImageNet-LT: real ImageNet photos (64x64), 202 classes, train long-tailed at IF 100 (480 .. 4 per
class), a balanced val split (20 per class) and a balanced test split (50 per class).

  python launch/train.py --config=configs/tiny_imagenet_lt.py:/tmp/tiny-imagenet-lt --workdir=DIR
  python launch/train.py --config=configs/tiny_imagenet_lt.py:/tmp/tiny-imagenet-lt,cpu --workdir=DIR

The schedules on a CPU train ResNet-8 at batch 128 with SGD (lr 0.1, weight decay 5e-4, cosine), then stage 2
chosen on the val split. The default (`,native`) keeps the images' own 64x64 side and trains each backbone 48
epochs: chosen on val over `,cpu` (32x32, 24 epochs: the schedule of every figure before 2026-12-06, 36-56 min
on 2 cores), `,long` (32x32, 72 epochs) and 64x64 at 24 epochs (docs/REPRODUCING.md, "The image side");
about 2 h 15 min in all on 2 cores (naive 67 min, stage 1 about 60). `,full` is the schedule for a GPU:
ResNet-32 at 64x64 with the paper's CIFAR recipe (batch 64, SGD 0.9, cosine from 0.01, 310 + 10 epochs,
stage-1 weight decay 5e-3).
The folder layout is ROOT/{train,val,test}/<wnid>/*.JPEG; launch/make_tiny_imagenet_lt.py builds it from Tiny
ImageNet (docs/REPRODUCING.md names the source and the file-list hash).
"""

from bwlm_jax.config import base_config


# (image side, epochs of each backbone stage) of the CPU schedules; '' is the default, chosen on the val split.
CPU_SCHEDULES = {'native': (64, 48), 'cpu': (32, 24), 'long': (32, 72)}


def get_config(arg: str = ''):
  root, _, schedule = arg.partition(',')
  names = (*CPU_SCHEDULES, 'full')
  if schedule not in ('', *names):
    choices = '|'.join(f',{name}' for name in names)
    raise ValueError(f'configs/tiny_imagenet_lt.py takes ROOT[{choices}], got schedule {schedule!r}.')
  config = base_config()
  config.data.name = 'folder'
  config.data.folder = root or None
  if schedule == 'full':
    config.data.image_size = 64
    config.model.name = 'resnet32'
    return config
  # The usual short-schedule SGD recipe for both backbones (lr 0.1, weight decay 5e-4, batch 128; the weight
  # decay and schedule comparisons on the val split are in docs/REPRODUCING.md).
  config.data.image_size, epochs = CPU_SCHEDULES[schedule or 'native']
  config.model.name = 'resnet8'
  config.batch_size = 128
  for stage in (config.naive, config.stage1):
    stage.epochs = epochs
    stage.learning_rate = 0.1
    stage.weight_decay = 5e-4
  config.checkpoint_every_steps = 500
  return config
