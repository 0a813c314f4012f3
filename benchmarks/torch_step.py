"""The PyTorch side of `launch/benchmark.py --torch_python=...`: one plain training step of the same ResNet-32.

Same network as bwlm_jax.models.resnet_cifar (16/32/64 channels, 5 basic blocks a stage, option-A shortcuts,
BatchNorm in training mode), SGD with momentum and weight decay, cross-entropy, batch 128 of 32x32 images
already in memory, float32, channels-last or not (--channels_last), PyTorch's default threads (all cores).
Prints one JSON record like the JAX measurements. Needs only torch; not imported by the package.
"""

import argparse
import json
import platform
import time

import torch
from torch import nn
from torch.nn import functional as F


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


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--classes', type=int, default=100)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--blocks', type=int, default=3)
  parser.add_argument('--channels_last', action='store_true')
  args = parser.parse_args()
  torch.manual_seed(0)
  model = ResNet32(args.classes).train()
  images = torch.randn(args.batch, 3, 32, 32)
  labels = torch.randint(0, args.classes, (args.batch,))
  if args.channels_last:
    model = model.to(memory_format=torch.channels_last)
    images = images.contiguous(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  step()  # warm-up
  best = float('inf')
  for _ in range(args.blocks):
    start = time.perf_counter()
    for _ in range(args.steps):
      step()
    best = min(best, (time.perf_counter() - start) / args.steps)
  print(json.dumps({'measurement': 'stage1_train_pytorch', 'model': 'resnet32', 'batch': args.batch,
                    'image_size': 32, 'dtype': 'float32', 'device': platform.processor() or 'cpu',
                    'torch': torch.__version__, 'threads': torch.get_num_threads(),
                    'channels_last': args.channels_last, 'step_s': round(best, 5),
                    'images_per_s': round(args.batch / best, 1)}), flush=True)


if __name__ == '__main__':
  main()
