"""Makes `torch_resnets.npz`: two small ResNets assembled from torchvision's own block classes, their state
dicts, an input batch and the features and logits PyTorch computes for it (eval mode), so that the test
suite checks, without PyTorch, that bwlm_jax's ImageNet ResNets are the same networks.

  python tests/data/make_torch_resnet_fixture.py tests/data/torch_resnets.npz   # needs torch + torchvision

The networks follow torchvision.models.ResNet layer for layer (7x7/2 stem, 3x3/2 max-pool, four stages,
stride on the first block of stages 2-4, on the bottleneck's 3x3) at 1/16 of its width (stem of 4
channels): 'basic' has BasicBlocks [1, 2, 1, 1]; 'grouped' has Bottlenecks [1, 1, 2, 1] with 4 groups of
width 32 (ResNeXt's grouped 3x3). BatchNorm statistics are random, so that they matter.
"""

import sys

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

NETWORKS = {'basic': (BasicBlock, (1, 2, 1, 1), 1, 64), 'grouped': (Bottleneck, (1, 1, 2, 1), 4, 32)}


class SmallResNet(nn.Module):
  """torchvision's ResNet with a stem of `width` channels instead of 64 (its _make_layer, written out)."""

  def __init__(self, block, layers, groups, width_per_group, width=4, num_classes=5):
    super().__init__()
    self.groups, self.base_width, self.inplanes = groups, width_per_group, width
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for stage, blocks in enumerate(layers):
      setattr(self, f'layer{stage + 1}', self._make_layer(block, width * 2 ** stage, blocks, 1 if stage == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)


def main(out: str) -> None:
  torch.manual_seed(0)
  arrays = {}
  images = torch.rand(2, 3, 32, 32)
  arrays['images'] = images.permute(0, 2, 3, 1).numpy()  # NHWC, as bwlm_jax takes them
  for name, (block, layers, groups, width_per_group) in NETWORKS.items():
    net = SmallResNet(block, layers, groups, width_per_group)
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.5, 1.5)
        nn.init.uniform_(module.bias, -0.2, 0.2)
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
    net.eval()
    with torch.no_grad():
      features = net.features(images)
      logits = net.fc(features)
    for key, value in net.state_dict().items():
      arrays[f'{name}/state/{key}'] = value.numpy()
    arrays[f'{name}/features'] = features.numpy()
    arrays[f'{name}/logits'] = logits.numpy()
  np.savez_compressed(out, **arrays)


if __name__ == '__main__':
  main(sys.argv[1])
