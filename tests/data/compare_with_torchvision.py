"""Development check, not part of the suite: full-size torchvision ResNets against bwlm_jax's, and an exported
model loaded back into torchvision's class. Needs two interpreters: one with torch + torchvision, one with
bwlm_jax (JAX); they exchange files in DIR.

  TORCH_PY tests/data/compare_with_torchvision.py torch DIR      # random-init torchvision models, features
  python   tests/data/compare_with_torchvision.py jax DIR        # the same weights here: max |difference|
  TORCH_PY tests/data/compare_with_torchvision.py load FILE.safetensors NAME CLASSES   # strict load
"""

import os
import sys

import numpy as np

MODELS = {'resnet50': 'resnet50', 'resnext50': 'resnext50_32x4d', 'resnet152': 'resnet152'}


def torch_side(out: str) -> None:
  import torch
  import torchvision
  from safetensors.torch import save_file
  torch.manual_seed(0)
  images = torch.rand(2, 3, 224, 224)
  os.makedirs(out, exist_ok=True)
  for name, torch_name in MODELS.items():
    net = getattr(torchvision.models, torch_name)()
    for module in net.modules():  # random statistics, so that they matter
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
    net.eval()
    with torch.no_grad():
      net.fc, fc = torch.nn.Identity(), net.fc
      features = net(images)
      net.fc = fc
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(out, f'{name}.safetensors'))
    np.savez(os.path.join(out, f'{name}.npz'), images=images.permute(0, 2, 3, 1).numpy(), features=features.numpy())


def jax_side(out: str) -> None:
  from bwlm_jax import weights
  from bwlm_jax.models import build_model
  for name in MODELS:
    data = np.load(os.path.join(out, f'{name}.npz'))
    model = build_model({'name': name, 'dtype': 'float32'}, 1000)
    backbone = weights.pretrained_backbone(os.path.join(out, f'{name}.safetensors'), model, (224, 224, 3), name)
    features, _ = model.features(backbone['params'], backbone['batch_stats'], data['images'], train=False)
    difference = np.abs(np.asarray(features) - data['features'])
    print(f'{name}: features {data["features"].shape}, max |difference| {difference.max():.3g} '
          f'(max |feature| {np.abs(data["features"]).max():.3g})')


def load(path: str, name: str, classes: int) -> None:
  import torchvision
  from safetensors.torch import load_file
  net = getattr(torchvision.models, MODELS.get(name, name))(num_classes=classes)
  print(net.load_state_dict(load_file(path), strict=True))


if __name__ == '__main__':
  {'torch': lambda: torch_side(sys.argv[2]), 'jax': lambda: jax_side(sys.argv[2]),
   'load': lambda: load(sys.argv[2], sys.argv[3], int(sys.argv[4]))}[sys.argv[1]]()
