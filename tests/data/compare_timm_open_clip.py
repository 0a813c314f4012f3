"""Development check, not part of the suite: the Vision Transformers here against timm and open_clip at full
size, with random weights. Needs two interpreters: one with torch, timm and open_clip, one with bwlm_jax
(JAX); they exchange files in DIR.

  TORCH_PY tests/data/compare_timm_open_clip.py torch DIR        # reference networks: weights, features, parameter counts
  python   tests/data/compare_timm_open_clip.py jax DIR          # the same weights here: features compared, exports written
  TORCH_PY tests/data/compare_timm_open_clip.py load DIR         # those exports, strict load into the reference classes
  TORCH_PY tests/data/compare_timm_open_clip.py load FILE.safetensors   # an export of launch/export.py (its sidecar read)

The networks: timm's vit_base_patch16_224 (1000 classes), vit_small_patch14_dinov2 and
vit_small_patch14_reg4_dinov2 (at 224 px: their 518-px position embedding is timm's to resample and this
check's point is the network), open_clip's ViT-B-16 image tower, timm's tf_efficientnet_lite0 and
efficientnet_lite0; every LayerNorm, LayerScale and BatchNorm (statistics too) randomised.
"""

import json
import os
import sys

import numpy as np

SIZE = 224
# name here -> (source, reference name, size)
NETWORKS = {'vit_base_patch16': ('timm', 'vit_base_patch16_224', SIZE),
            'vit_small_patch14_dinov2': ('timm', 'vit_small_patch14_dinov2', SIZE),
            'vit_small_patch14_reg4_dinov2': ('timm', 'vit_small_patch14_reg4_dinov2', SIZE),
            'clip_vit_b16': ('open_clip', 'ViT-B-16', SIZE),
            'tf_efficientnet_lite0': ('timm', 'tf_efficientnet_lite0', SIZE),
            'timm_efficientnet_lite0': ('timm', 'efficientnet_lite0', SIZE)}


def _reference(source: str, name: str, size: int, num_classes: int = 1000):
  if source == 'timm':
    import timm
    size_arg = {} if 'efficientnet' in name else {'img_size': size}
    return timm.create_model(name, pretrained=False, num_classes=num_classes if 'dinov2' not in name else 0,
                             **size_arg).eval()
  import open_clip
  return open_clip.create_model(name, force_image_size=size).visual.eval()


def torch_side(folder: str) -> None:
  import torch
  from safetensors.torch import save_file
  torch.manual_seed(0)
  images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
  np.save(os.path.join(folder, 'images.npy'), images.permute(0, 2, 3, 1).numpy())
  counts = {}
  for ours, (source, name, size) in NETWORKS.items():
    net = _reference(source, name, size)
    for key, value in net.named_parameters():
      if key.endswith('gamma') or ('norm' in key or 'ln_' in key or '.bn' in key or key.startswith('bn')) \
          and key.endswith('weight'):
        value.data.uniform_(0.5, 1.5)
    for key, value in net.named_buffers():  # BatchNorm statistics of their own
      if key.endswith('running_var'):
        value.uniform_(0.5, 1.5)
      elif key.endswith('running_mean'):
        value.uniform_(-0.2, 0.2)
    with torch.no_grad():
      features = net.forward_head(net.forward_features(images), pre_logits=True) if source == 'timm' else net(images)
    prefix = 'visual.' if source == 'open_clip' else ''
    save_file({prefix + k: v.contiguous() for k, v in net.state_dict().items()},
              os.path.join(folder, f'{ours}.safetensors'))
    np.save(os.path.join(folder, f'{ours}.features.npy'), features.numpy())
    counts[ours] = sum(p.numel() for p in net.parameters())
  json.dump(counts, open(os.path.join(folder, 'counts.json'), 'w'), indent=1)
  print(counts)


def jax_side(folder: str) -> None:
  import jax
  from bwlm_jax import weights
  from bwlm_jax.models import build_model, torch_layout
  from safetensors.numpy import save_file
  images = np.load(os.path.join(folder, 'images.npy'))
  counts = json.load(open(os.path.join(folder, 'counts.json')))
  for ours, (source, name, size) in NETWORKS.items():
    classes = 1000 if source == 'timm' and 'dinov2' not in name else 0  # timm's heads; CLIP has none
    model = build_model({'name': ours, 'dtype': 'float32'}, max(classes, 1))
    path = os.path.join(folder, f'{ours}.safetensors')
    variables = weights.pretrained_backbone(path, model, (size, size, 3), ours)
    features, _ = model.features(variables['params'], variables['batch_stats'], images, train=False)
    expected = np.load(os.path.join(folder, f'{ours}.features.npy'))
    count = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables['params']))
    if classes:
      count += (model.feature_dim((size, size, 3)) + 1) * classes
    print(f'{ours}: max |feature difference| {np.abs(np.asarray(features) - expected).max():.2e} '
          f'(features up to {np.abs(expected).max():.1f}); parameters {count:,} here, {counts[ours]:,} in {source}')
    head = model.init_head(jax.random.key(0), features.shape[-1])
    state = torch_layout.to_torch(variables, head, weights.torch_layout_of(ours, variables))
    save_file(state, os.path.join(folder, f'export-{ours}.safetensors'))


def load(target: str) -> None:
  import torch
  from safetensors.torch import load_file
  if os.path.isdir(target):
    files = [(os.path.join(target, f'export-{ours}.safetensors'), ours, 1000, SIZE) for ours in NETWORKS]
  else:
    sidecar = json.load(open(target + '.json'))
    files = [(target, sidecar['model'], len(sidecar['class_names']), sidecar['image_size'])]
  for path, ours, classes, size in files:
    source, name, _ = NETWORKS.get(ours, ('timm', f'{ours}_224', size))
    if ours.startswith('clip'):
      source, name = 'open_clip', {'clip_vit_b16': 'ViT-B-16', 'clip_vit_b32': 'ViT-B-32',
                                   'clip_vit_l14': 'ViT-L-14'}[ours.removesuffix('_quickgelu')]
      name += '-quickgelu' if ours.endswith('_quickgelu') else ''
    state = load_file(path)
    if source == 'timm':
      net = _reference(source, name, size, classes)
      if 'dinov2' in ours:  # timm's DINOv2 has no head of its own: one of the export's size
        net.reset_classifier(state['head.weight'].shape[0])
      net.load_state_dict(state, strict=True)
    else:
      net = _reference(source, name, size)
      net.load_state_dict({k[len('visual.'):]: v for k, v in state.items() if k.startswith('visual.')}, strict=True)
      head = torch.nn.Linear(*reversed(state['head.weight'].shape))
      head.load_state_dict({'weight': state['head.weight'], 'bias': state['head.bias']}, strict=True)
    print(f'{path}: loads strict=True into {source} {name} ({size} px)')


if __name__ == '__main__':
  mode, target = sys.argv[1], sys.argv[2]
  os.makedirs(target, exist_ok=True) if mode == 'torch' else None
  {'torch': torch_side, 'jax': jax_side, 'load': load}[mode](target)
