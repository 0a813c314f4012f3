"""Makes tests/data/vit.npz: small Vision Transformers built from the reference packages' own classes
(timm's VisionTransformer: a ViT pooling its class token, one pooling its patch tokens' mean, a DINOv2-style
one with LayerScale and registers; open_clip's VisionTransformer: CLIP's image tower with QuickGELU and with
GELU), their random weights, and their features and logits on fixed images; and the same weights loaded
by timm and open_clip into networks for half the image size (the position embedding resampled their way).
Run where torch, timm and open_clip are installed:

  TORCH_PY tests/data/make_vit_fixture.py
"""

import os

import numpy as np

SIZE, PATCH, WIDTH, DEPTH, HEADS, CLASSES, EMBED = 16, 4, 16, 2, 2, 5, 8


def _randomise(net, torch):
  """Every LayerNorm, LayerScale, token and position embedding random, so that each of them matters."""
  for name, value in net.named_parameters():
    if 'norm' in name or name.split('.')[-2:-1] in (['ln_pre'], ['ln_post'], ['ln_1'], ['ln_2']) or 'gamma' in name:
      value.data.uniform_(0.5, 1.5) if name.endswith(('weight', 'gamma')) else value.data.uniform_(-0.2, 0.2)
    elif any(token in name for token in ('cls_token', 'reg_token', 'pos_embed', 'class_embedding',
                                          'positional_embedding')):
      value.data.normal_(0, 0.5)
  return net.eval()


def main() -> None:
  import torch
  import timm
  from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
  from open_clip.transformer import QuickGELU, VisionTransformer as ClipTower
  from open_clip.model import resize_pos_embed
  torch.manual_seed(0)
  out = {}
  images = {size: torch.rand(3, 3, size, size) * 2 - 1 for size in (SIZE, SIZE // 2)}
  out.update({f'images{size}': x.permute(0, 2, 3, 1).numpy() for size, x in images.items()})
  timm_nets = {'vit': {}, 'vit_avg': {'global_pool': 'avg'},
               'dinov2_reg': {'init_values': 1e-5, 'reg_tokens': 2, 'no_embed_class': True}}
  for name, kwargs in timm_nets.items():
    args = dict(patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES, **kwargs)
    net = _randomise(VisionTransformer(img_size=SIZE, **args), torch)
    small = VisionTransformer(img_size=SIZE // 2, **args).eval()
    small.load_state_dict(checkpoint_filter_fn(net.state_dict(), small), strict=True)
    with torch.no_grad():
      for tag, model, x in ((name, net, images[SIZE]), (f'{name}_half', small, images[SIZE // 2])):
        out[f'{tag}/features'] = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
        out[f'{tag}/logits'] = model(x).numpy()
    out.update({f'{name}/state/{k}': v.numpy() for k, v in net.state_dict().items()})
  for name, act in (('clip', QuickGELU), ('clip_gelu', torch.nn.GELU)):
    args = dict(patch_size=PATCH, width=WIDTH, layers=DEPTH, heads=HEADS, mlp_ratio=4.0, output_dim=EMBED,
                act_layer=act)
    net = _randomise(ClipTower(image_size=SIZE, **args), torch)
    state = {f'visual.{k}': v for k, v in net.state_dict().items()}
    small = ClipTower(image_size=SIZE // 2, **args).eval()

    class Whole(torch.nn.Module):  # what resize_pos_embed reads: a model with a .visual tower
      visual = small

    resize_pos_embed(state, Whole())
    small.load_state_dict({k[len('visual.'):]: v for k, v in state.items()}, strict=True)
    with torch.no_grad():
      for tag, model, x in ((name, net, images[SIZE]), (f'{name}_half', small, images[SIZE // 2])):
        out[f'{tag}/features'] = model(x).numpy()
        proj, model.proj = model.proj, None
        out[f'{tag}/pooled'] = model(x).numpy()
        model.proj = proj
    out.update({f'{name}/state/visual.{k}': v.numpy() for k, v in net.state_dict().items()})
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vit.npz')
  np.savez_compressed(path, **out)
  print(path, timm.__version__, sorted(k for k in out if k.startswith('clip/state'))[:6])


if __name__ == '__main__':
  main()
