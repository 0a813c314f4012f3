"""CLIP's text tower (Radford et al. 2021) as OpenAI CLIP and open_clip build it: token embedding, a learned
position embedding, a pre-norm transformer whose attention is causal, `ln_final`, then the feature at the
end-of-text token (the row's highest id) projected into the image-text embedding by `text_projection`.

It lives in the same whole-CLIP file as the image tower (`models/vit.py`'s CLIP family), under the names without
`visual.`: `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.N.*` (the image tower's block
names), `ln_final`, `text_projection`, and `logit_scale` (log of the zero-shot logits' scale). The blocks are
`vit.Block`s, so GELU or QuickGELU follows the image tower's model.name (`_quickgelu` for OpenAI's weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.models import torch_layout, vit
from bwlm_jax.runtime.errors import UsageError


@dataclasses.dataclass(frozen=True)
class TextSpec:
  """One text tower's shape."""
  width: int
  depth: int
  heads: int
  embed: int  # the image-text embedding's width (the image tower's `proj` maps there too)
  vocab: int = 49408
  context: int = 77
  quick_gelu: bool = False


def _text(width: int, heads: int, embed: int):
  return {'': TextSpec(width, 12, heads, embed), '_quickgelu': TextSpec(width, 12, heads, embed, quick_gelu=True)}


# CLIP model.name (its image tower's) -> its text tower: OpenAI's and open_clip's ViT-B/32, B/16 and L/14.
TEXT_SPECS = {f'clip_vit_{name}{quick}': spec for name, (width, heads, embed) in
              {'b32': (512, 8, 512), 'b16': (512, 8, 512), 'l14': (768, 12, 768)}.items()
              for quick, spec in _text(width, heads, embed).items()}
TOWER_KEY = 'token_embedding.weight'  # a state dict holds a text tower when it holds this
LEFT_OUT = ('logit_scale', 'logit_bias', 'attn_mask')  # beside the tower in a whole file; not its parameters


class Embedding(nn.Module):
  """A lookup table held as `weight` [vocab, width] (torch's nn.Embedding)."""
  vocab: int
  width: int

  @nn.compact
  def __call__(self, tokens):
    return jnp.take(self.param('weight', nn.initializers.normal(0.02), (self.vocab, self.width)), tokens, axis=0)


class TextTransformer(nn.Module):
  """int tokens [N, L] (L <= context) -> text embeddings [N, embed], not normalised."""
  spec: TextSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    spec = self.spec
    x = Embedding(spec.vocab, spec.width, name='token_embedding')(tokens).astype(self.dtype)
    position = self.param('positional_embedding', nn.initializers.normal(0.01), (spec.context, spec.width))
    x = x + position[:tokens.shape[1]].astype(self.dtype)
    blocks = vit.Spec('clip', 0, spec.width, spec.depth, spec.heads, quick_gelu=spec.quick_gelu)
    for i in range(spec.depth):
      x = vit.Block(blocks, 1e-5, self.dtype, causal=True, name=f'resblocks_{i}')(x)
    x = vit.LayerNorm(1e-5, dtype=self.dtype, name='ln_final')(x)
    end = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]  # end-of-text has the highest id
    projection = self.param('text_projection', nn.initializers.normal(spec.width ** -0.5), (spec.width, spec.embed))
    return end.astype(jnp.float32) @ projection


def text_spec(model_name: str) -> TextSpec:
  """The text tower of CLIP model `model_name`; an error for a model without one."""
  if model_name not in TEXT_SPECS:
    raise UsageError(f'model.name={model_name!r} has no text tower: zero-shot classifiers and text-initialised heads '
                     f'need a CLIP model ({", ".join(TEXT_SPECS)}).')
  return TEXT_SPECS[model_name]


def text_layout(params: dict) -> torch_layout.Layout:
  """The torch names of a text tower's parameters (`params`: its params or their shapes)."""
  rules = ((r'^resblocks_(\d+)$', r'transformer.resblocks.\1'),)
  return torch_layout.Layout(torch_layout.named_layers({'params': params}, rules), head='text_head')


def from_state_dict(state: dict, spec: TextSpec, source: str) -> tuple[dict, float | None]:
  """(params, logit scale or None) of the text tower `spec` from a whole CLIP state dict; one line naming
  `source` when it holds no text tower (an image tower alone) or one of another shape."""
  if TOWER_KEY not in state:
    raise UsageError(f'{source} holds no CLIP text tower ({TOWER_KEY}): zero-shot classifiers and text-initialised '
                     'heads need the whole CLIP model file (image and text towers), not its image tower alone.')
  tower = TextTransformer(spec)
  shapes = jax.eval_shape(lambda key: tower.init(key, jnp.zeros((1, spec.context), jnp.int32)),
                          jax.random.key(0))['params']
  text = {name: value for name, value in state.items() if not name.startswith('visual.') and name not in LEFT_OUT}
  params = torch_layout.from_torch(text, {'params': shapes, 'batch_stats': {}}, text_layout(shapes), source)['params']
  scale = state.get('logit_scale')
  return params, (float(np.exp(np.asarray(scale, np.float64))) if scale is not None else None)
