"""The PyTorch side of `launch/benchmark.py --torch_python=...` and `benchmarks/gpu_check.sh`: one plain
training step (or the evaluation forward pass, --kind=eval) of the same network, in the reference class the
project's exports load into.

ResNet-32 is bwlm_jax.models.resnet_cifar's network (16/32/64 channels, 5 basic blocks a stage, option-A
shortcuts); the ImageNet ResNets and ResNeXt-50 are torchvision's, EfficientNet-Lite efficientnet-lite-pytorch's,
the ViTs, DeiT and DINOv2 timm's. Training: BatchNorm in training mode, SGD with momentum and weight decay,
cross-entropy, every parameter; evaluation: inference mode under `torch.no_grad`. A batch already on the device,
float32 or bfloat16 autocast (--dtype), channels-last or not (--channels_last), eager or `torch.compile`
(--compile), --threads on a CPU (default PyTorch's). Prints one JSON record like the JAX measurements, with the
process's peak resident memory. Needs torch (and the package of the network's class); not imported by the
package.
"""

import argparse
import json
import platform
import resource
import time

import torch
from torch import nn
from torch.nn import functional as F


def peak_rss_mb() -> int:
  """This program's peak resident memory: the kernel's VmHWM (since exec; ru_maxrss would carry the memory of the
  process that started it, which a fork copies), else ru_maxrss."""
  try:
    with open('/proc/self/status') as status:
      return round(next(int(line.split()[1]) for line in status if line.startswith('VmHWM:')) / 1024)
  except (OSError, StopIteration):
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class Block(nn.Module):

  def __init__(self, inputs: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(inputs, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.stride, self.pad = stride, channels - inputs

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x
    if self.stride != 1 or self.pad:
      shortcut = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(y + shortcut)


class ResNet32(nn.Module):

  def __init__(self, classes: int):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    blocks, inputs = [], 16
    for stage, channels in enumerate((16, 32, 64)):
      for block in range(5):
        blocks.append(Block(inputs, channels, 2 if stage > 0 and block == 0 else 1))
        inputs = channels
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, classes)

  def forward(self, x):
    return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def _network(name: str, classes: int, image_size: int):
  """The reference class of bwlm-jax's `name` (the one its export names)."""
  if name == 'resnet32':
    return ResNet32(classes)
  if 'efficientnet_lite' in name:
    if name.startswith(('tf_', 'timm_')):
      import timm
      return timm.create_model(name.removeprefix('timm_'), num_classes=classes)
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name(name.replace('_', '-'), num_classes=classes)
  if name.startswith(('vit_', 'deit_')):
    import timm
    return timm.create_model(name if 'dinov2' in name else f'{name}_224', num_classes=classes, img_size=image_size)
  import torchvision
  return getattr(torchvision.models, 'resnext50_32x4d' if name == 'resnext50' else name)(num_classes=classes)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--model', default='resnet32')
  parser.add_argument('--kind', default='train', choices=('train', 'eval'))
  parser.add_argument('--threads', type=int, default=0)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--classes', type=int, default=100)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--blocks', type=int, default=3)
  parser.add_argument('--device', default='cpu')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--channels_last', action='store_true')
  parser.add_argument('--compile', action='store_true')
  args = parser.parse_args()
  torch.manual_seed(0)
  if args.threads:
    torch.set_num_threads(args.threads)
  device = torch.device(args.device)
  model = _network(args.model, args.classes, args.image_size).to(device).train(args.kind == 'train')
  images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
  labels = torch.randint(0, args.classes, (args.batch,), device=device)
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
  forward = torch.compile(model) if args.compile else model

  def step():
    if args.kind == 'eval':
      with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16'):
        return forward(images)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == 'bfloat16'):
      loss = F.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  def synchronize():
    if device.type == 'cuda':
      torch.cuda.synchronize()

  start = time.perf_counter()
  step()  # warm-up (and, with --compile, the compilation)
  synchronize()
  warmup_s = time.perf_counter() - start
  best = float('inf')
  for _ in range(args.blocks):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    synchronize()
    best = min(best, (time.perf_counter() - start) / args.steps)
  name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or 'cpu')
  measurement = 'stage1_train_pytorch' if args.kind == 'train' else 'eval_forward_pytorch'
  print(json.dumps({'measurement': measurement, 'model': args.model, 'batch': args.batch,
                    'image_size': args.image_size, 'dtype': args.dtype, 'device': name,
                    'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'channels_last': args.channels_last, 'compiled': args.compile, 'warmup_s': round(warmup_s, 2),
                    'step_s': round(best, 5), 'images_per_s': round(args.batch / best, 1),
                    'peak_rss_mb': peak_rss_mb()}), flush=True)


if __name__ == '__main__':
  main()
