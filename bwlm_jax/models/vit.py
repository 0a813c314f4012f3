"""Vision Transformers (Dosovitskiy et al. 2021) as timm builds them (ViT, DeiT, DINOv2 with LayerScale and
registers) and CLIP's image tower as OpenAI CLIP and open_clip build it (Radford et al. 2021).

Both are the same pre-norm transformer over patch tokens and a class token; they differ in names, in where
the position embedding covers the class token, in a LayerNorm before the blocks (CLIP), in the activation
(QuickGELU in OpenAI's weights) and in what comes out: timm's final LayerNorm on the class token (or on the
patch tokens' mean, `pool='avg'`), CLIP's `ln_post` on the class token, then its projection into the
image-text embedding (`projection=False` stops before it). Modules carry the PyTorch names (`blocks_3.attn.qkv`
is `blocks.3.attn.qkv`; `resblocks_3` is `transformer.resblocks.3`), so a state dict maps by name
(`models/torch_layout.py`). The position embedding is a parameter of the grid `data.image_size / patch`;
weights made at another resolution are resampled on the way in, as timm and open_clip do.
For light fine-tuning, LoRA updates beside the attention projections (`lora_rank`) and AdaptFormer
bottlenecks beside the MLPs (`adapter_dim`) are modules of their own (`*_lora`, `adapter`), outside the
sources' layouts: zero at the start, so the network is the pretrained one until they train.
Stochastic depth and dropout are not applied.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bwlm_jax.models import torch_layout
from bwlm_jax.models.conv import Conv
from bwlm_jax.models.family import BASE_TUNE_MODES, Family
from bwlm_jax.runtime.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Spec:
  """One network: its transformer's shape and which builder's conventions it follows."""
  family: str  # 'timm' | 'clip'
  patch: int
  width: int
  depth: int
  heads: int
  layer_scale: bool = False  # DINOv2: a learned per-channel scale on each residual branch
  registers: int = 0  # DINOv2 "reg4": extra tokens after the class token, outside the position embedding
  quick_gelu: bool = False  # OpenAI CLIP's weights
  embed: int = 0  # CLIP: the width of the image-text embedding `proj` maps into
  mean: tuple = (0.5, 0.5, 0.5)  # the input the usual weights of this network expect ([0, 1] pixels)
  std: tuple = (0.5, 0.5, 0.5)


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CLIP = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
_SIZES = {'tiny': (192, 12, 3), 'small': (384, 12, 6), 'base': (768, 12, 12), 'large': (1024, 24, 16)}


def _timm(size, patch, **kwargs):
  return Spec('timm', patch, *_SIZES[size], **kwargs)


def _clip(size, patch, embed, quick_gelu):
  return Spec('clip', patch, *_SIZES[size], quick_gelu=quick_gelu, embed=embed, **CLIP)


# model.name -> Spec. timm's names without the resolution (every network runs at data.image_size); timm's
# vit_* weights (augreg) expect [-1, 1] inputs, DeiT's and DINOv2's ImageNet's statistics.
SPECS = {
    'vit_tiny_patch16': _timm('tiny', 16), 'vit_small_patch16': _timm('small', 16),
    'vit_small_patch32': _timm('small', 32), 'vit_base_patch16': _timm('base', 16),
    'vit_base_patch32': _timm('base', 32), 'vit_large_patch16': _timm('large', 16),
    'deit_tiny_patch16': _timm('tiny', 16, **IMAGENET), 'deit_small_patch16': _timm('small', 16, **IMAGENET),
    'deit_base_patch16': _timm('base', 16, **IMAGENET),
    **{f'vit_{size}_patch14{reg}_dinov2': _timm(size, 14, layer_scale=True, registers=4 if reg else 0, **IMAGENET)
       for size in ('small', 'base', 'large') for reg in ('', '_reg4')},
    **{f'clip_vit_{name}{quick}': _clip(size, patch, embed, bool(quick))
       for name, size, patch, embed in (('b32', 'base', 32, 512), ('b16', 'base', 16, 512), ('l14', 'large', 14, 768))
       for quick in ('', '_quickgelu')},
}
# The torch names of each family's block modules: norm, attention (input and output projection), layer
# scale, norm, MLP (two linears), layer scale.
BLOCK_NAMES = {'timm': ('norm1', 'attn', 'qkv', 'proj', 'ls1', 'norm2', 'mlp', 'fc1', 'fc2', 'ls2'),
               'clip': ('ln_1', 'attn', 'in_proj', 'out_proj', 'ls_1', 'ln_2', 'mlp', 'c_fc', 'c_proj', 'ls_2')}
LAYER_SCALE_INIT = 1e-5  # timm's init_values for DINOv2


def quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


_SQRT_HALF = 0.5 ** 0.5
_LARGE_NEGATIVE = -0.7 * float(jnp.finfo(jnp.float32).max)  # as jax.nn.dot_product_attention masks


def gelu(x):
  """The exact GELU in PyTorch's form, x / 2 * (1 + erf(x / sqrt 2)): jax.nn.gelu's erfc form is the same to
  float rounding and 2-3x slower on XLA:CPU (forward and gradient)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _attention_xla_layout(qkv, heads: int, causal: bool):
  """jax.nn.dot_product_attention on q, k, v as [batch, tokens, heads, head width]: the layout whose gradient
  XLA:CPU lays out best (its own transposes of k and v feed YNNPACK's matrix products)."""
  batch, tokens, width3 = qkv.shape
  qkv = qkv.reshape(batch, tokens, 3, heads, width3 // (3 * heads))
  y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=causal)
  return y.reshape(batch, tokens, width3 // 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def attention(qkv, heads: int, causal: bool = False):
  """Multi-head scaled dot-product attention on the input projection's output [batch, tokens, 3 * width]
  (q, k, v in timm's and torch's order), [batch, tokens, width] out. Without a gradient it runs with heads
  leading ([batch, heads, tokens, head width]: XLA:CPU's forward pass 1.6x faster); under differentiation as
  `_attention_xla_layout` (that layout's gradient 1.2x faster than the heads-leading one's). The two agree to
  float rounding."""
  batch, tokens, width3 = qkv.shape
  q, k, v = qkv.reshape(batch, tokens, 3, heads, width3 // (3 * heads)).transpose(2, 0, 3, 1, 4)
  logits = jnp.einsum('bntd,bnsd->bnts', q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
  if causal:
    logits = jnp.where(jnp.tril(jnp.ones((tokens, tokens), bool)), logits, _LARGE_NEGATIVE)
  y = jnp.einsum('bnts,bnsd->bntd', jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
  return y.transpose(0, 2, 1, 3).reshape(batch, tokens, width3 // 3)


def _attention_forward(qkv, heads, causal):
  return jax.vjp(lambda x: _attention_xla_layout(x, heads, causal), qkv)


def _attention_backward(heads, causal, vjp, g):
  del heads, causal
  return vjp(g)


attention.defvjp(_attention_forward, _attention_backward)


@jax.custom_vjp
def _materialized(x):
  """`x` as a buffer of its own in a pass without a gradient: XLA:CPU otherwise fuses a LayerNorm into the
  YNNPACK matrix product that reads it, which then computes it slower (ViT-S's 224-px forward pass 1.15-1.25x
  slower). Under differentiation the identity (there it was no faster)."""
  return jax.lax.optimization_barrier(x)


_materialized.defvjp(lambda x: (x, None), lambda _, g: (g,))


@jax.custom_vjp
def _dense_product(x, kernel):
  """x @ kernel for x [..., in]; its kernel gradient is one matrix product over the tokens flattened, x [n, in]
  transposed times the output gradient [n, out]. Autodiff's form contracts x and the gradient over their
  leading axes as they are, and XLA:CPU writes the [n, out] gradient out transposed before every such product
  (qkv's and fc1's: 0.6 s of ViT-S/16's 224-px training step; the whole step 1.1x faster this way)."""
  return x @ kernel


def _dense_product_forward(x, kernel):
  return x @ kernel, (x, kernel)


def _dense_product_backward(residuals, g):
  x, kernel = residuals
  return g @ kernel.T, x.reshape(-1, x.shape[-1]).T @ g.reshape(-1, g.shape[-1])


_dense_product.defvjp(_dense_product_forward, _dense_product_backward)


def _dense_dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's product (x's last axis against the kernel's first) as `_dense_product`."""
  if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or precision is not None or preferred_element_type:
    raise ValueError(f'_dense_dot_general: nn.Dense\'s own product only, not {dimension_numbers}')
  return _dense_product(x, kernel)


def _dense(features: int, dtype, name: str, kernel_init=nn.initializers.xavier_uniform()):
  return nn.Dense(features, dtype=dtype, kernel_init=kernel_init, name=name, dot_general=_dense_dot_general)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _layer_norm(x, scale, bias, epsilon: float, dtype):
  """nn.LayerNorm's values (statistics in float32, the variance as E[x^2] - E[x]^2, `dtype` out) with the
  gradient written as one expression per operand: XLA:CPU's form of autodiff's was 1.03-1.1x slower in the
  ViTs' training steps and kept more of the step's buffers alive."""
  return _layer_norm_forward(x, scale, bias, epsilon, dtype)[0]


def _layer_norm_forward(x, scale, bias, epsilon, dtype):
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.maximum((x32 * x32).mean(-1, keepdims=True) - mean * mean, 0.0) + epsilon)
  return ((x32 - mean) * rstd * scale + bias).astype(dtype), (x, mean, rstd, scale)


def _layer_norm_backward(epsilon, dtype, residuals, g):
  del epsilon, dtype
  x, mean, rstd, scale = residuals
  normed = (x.astype(jnp.float32) - mean) * rstd
  g = g.astype(jnp.float32)
  scaled = g * scale
  dx = rstd * (scaled - scaled.mean(-1, keepdims=True) - normed * (scaled * normed).mean(-1, keepdims=True))
  leading = tuple(range(x.ndim - 1))
  return dx.astype(x.dtype), (g * normed).sum(leading), g.sum(leading)


_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
  """nn.LayerNorm over the last axis (the same parameters, `scale` and `bias`, in float32) through
  `_layer_norm`."""
  epsilon: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return _layer_norm(x, scale, bias, self.epsilon, self.dtype)


class LoRA(nn.Module):
  """A low-rank update beside a linear layer (Hu et al. 2022): x @ a @ b, `b` zero at the start so the
  network is exactly the pretrained one then; its scale alpha / rank is 1 (alpha = rank)."""
  features: int
  rank: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    a = self.param('a', nn.initializers.normal(1.0 / self.rank), (x.shape[-1], self.rank))
    b = self.param('b', nn.initializers.zeros, (self.rank, self.features))
    return (x @ a.astype(x.dtype)) @ b.astype(x.dtype)


def _projection(x, features: int, name: str, lora_rank: int, dtype):
  y = _dense(features, dtype, name)(x)
  return y + LoRA(features, lora_rank, dtype, name=f'{name}_lora')(x) if lora_rank else y


class Attention(nn.Module):
  """Multi-head self-attention with one input projection for q, k and v (timm's qkv, torch's in_proj);
  with `lora_rank`, a LoRA update beside both projections; `causal`: each token sees those before it (CLIP's
  text tower)."""
  heads: int
  names: tuple  # (input projection, output projection)
  dtype: Any = jnp.float32
  lora_rank: int = 0
  causal: bool = False

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    y = attention(_projection(x, 3 * width, self.names[0], self.lora_rank, self.dtype), self.heads, self.causal)
    return _projection(y, width, self.names[1], self.lora_rank, self.dtype)


class Adapter(nn.Module):
  """AdaptFormer's bottleneck beside a block's MLP (Chen et al. 2022): s * up(relu(down(x))) on the MLP's
  normalised input, s = 0.1, `up` zero at the start (the network is the pretrained one then)."""
  dim: int
  dtype: Any = jnp.float32
  scale: float = 0.1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_dense(self.dim, self.dtype, 'down')(x))
    return self.scale * _dense(x.shape[-1], self.dtype, 'up', nn.initializers.zeros)(y)


class Mlp(nn.Module):
  hidden: int
  names: tuple
  quick_gelu: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _dense(self.hidden, self.dtype, self.names[0])(x)
    y = quick_gelu(y) if self.quick_gelu else gelu(y)
    return _dense(x.shape[-1], self.dtype, self.names[1])(y)


class LayerScale(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.constant(LAYER_SCALE_INIT), (x.shape[-1],)).astype(x.dtype)


class Block(nn.Module):
  spec: Spec
  epsilon: float
  dtype: Any = jnp.float32
  lora_rank: int = 0
  adapter_dim: int = 0
  causal: bool = False

  @nn.compact
  def __call__(self, x):
    norm1, attn, qkv, proj, ls1, norm2, mlp, fc1, fc2, ls2 = BLOCK_NAMES[self.spec.family]
    y = Attention(self.spec.heads, (qkv, proj), self.dtype, self.lora_rank, self.causal, name=attn)(
        _materialized(LayerNorm(self.epsilon, dtype=self.dtype, name=norm1)(x)))
    x = x + (LayerScale(name=ls1)(y) if self.spec.layer_scale else y)
    normed = _materialized(LayerNorm(self.epsilon, dtype=self.dtype, name=norm2)(x))
    y = Mlp(4 * self.spec.width, (fc1, fc2), self.spec.quick_gelu, self.dtype, name=mlp)(normed)
    x = x + (LayerScale(name=ls2)(y) if self.spec.layer_scale else y)
    return x + Adapter(self.adapter_dim, self.dtype, name='adapter')(normed) if self.adapter_dim else x


class PatchEmbed(nn.Module):
  """timm's `patch_embed`: the patch convolution (with bias), held as `proj`."""
  width: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return Conv(self.width, (self.patch, self.patch), self.patch, padding='VALID', dtype=self.dtype,
                name='proj')(x)


def _position_init(key, shape, dtype=jnp.float32):
  return 0.02 * jax.random.normal(key, shape, dtype)


class VisionTransformer(nn.Module):
  """Backbone returning the pooled (CLIP: projected) features. `train` is accepted for the common interface;
  nothing here depends on it."""
  spec: Spec
  pool: str = 'token'  # timm: 'token' (class token) | 'avg' (mean of the patch tokens, then fc_norm)
  projection: bool = True  # CLIP: features in the image-text embedding (`proj`), else before it
  dtype: Any = jnp.float32
  lora_rank: int = 0  # > 0: LoRA beside every attention projection (light fine-tuning, train/tuning.py)
  adapter_dim: int = 0  # > 0: an AdaptFormer bottleneck of this width beside every block's MLP

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    spec = self.spec
    if x.shape[1] % spec.patch or x.shape[2] % spec.patch:
      raise ValueError(f'image size {x.shape[1:3]} is not a multiple of the patch size {spec.patch}')
    clip = spec.family == 'clip'
    if clip:
      x = Conv(spec.width, (spec.patch, spec.patch), spec.patch, padding='VALID', use_bias=False,
               dtype=self.dtype, name='conv1')(x)
    else:
      x = PatchEmbed(spec.width, spec.patch, self.dtype, name='patch_embed')(x)
    batch, grid_h, grid_w, width = x.shape
    x = x.reshape(batch, grid_h * grid_w, width)
    prefix = 1 + spec.registers
    if clip:
      cls = self.param('class_embedding', _position_init, (width,)).reshape(1, 1, width)
      position = self.param('positional_embedding', _position_init, (1 + grid_h * grid_w, width))[None]
    else:
      cls = self.param('cls_token', nn.initializers.zeros, (1, 1, width))
      grid_only = spec.registers > 0  # timm's no_embed_class: the embedding covers the patches only
      position = self.param('pos_embed', _position_init, (1, grid_h * grid_w + (0 if grid_only else 1), width))
    tokens = [jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, width))]
    if spec.registers:
      registers = self.param('reg_token', nn.initializers.zeros, (1, spec.registers, width))
      tokens.append(jnp.broadcast_to(registers.astype(x.dtype), (batch, spec.registers, width)))
      x = jnp.concatenate(tokens + [x + position.astype(x.dtype)], axis=1)
    else:
      x = jnp.concatenate(tokens + [x], axis=1) + position.astype(x.dtype)
    epsilon = 1e-5 if clip else 1e-6
    if clip:
      x = LayerNorm(epsilon, dtype=self.dtype, name='ln_pre')(x)
    for i in range(spec.depth):
      x = Block(spec, epsilon, self.dtype, self.lora_rank, self.adapter_dim,
                name=f'{"resblocks" if clip else "blocks"}_{i}')(x)
    if clip:
      x = LayerNorm(epsilon, dtype=self.dtype, name='ln_post')(x[:, 0])
      proj = self.param('proj', _position_init, (width, spec.embed))  # held either way: the tower's weights
      return x @ proj.astype(x.dtype) if self.projection else x
    if self.pool == 'avg':
      return LayerNorm(epsilon, dtype=self.dtype, name='fc_norm')(jnp.mean(x[:, prefix:], axis=1))
    return LayerNorm(epsilon, dtype=self.dtype, name='norm')(x[:, 0])  # per token: the class token's alone


def _build(name: str, options) -> VisionTransformer:
  return VisionTransformer(SPECS[name], pool=options.pool, projection=options.projection, dtype=options.dtype,
                           lora_rank=options.lora_rank, adapter_dim=options.adapter_dim)


def _last_modules(name: str, params: dict) -> tuple[str, ...]:
  """The last quarter of the blocks, the final norm (and CLIP's projection)."""
  del name
  blocks = sorted((n for n in params if re.fullmatch(r'(res)?blocks_\d+', n)), key=lambda n: int(n.split('_')[-1]))
  return tuple(blocks[-max(1, len(blocks) // 4):]) + tuple(n for n in ('norm', 'fc_norm', 'ln_post', 'proj')
                                                          if n in params)


def _timm_reference_class(name: str, config_model: dict, num_classes: int, image_size: int) -> str:
  timm_name = name if 'dinov2' in name else f'{name}_224'
  pool = ", global_pool='avg'" if config_model.get('pool', 'token') == 'avg' else ''
  return f"timm.create_model('{timm_name}', num_classes={num_classes}, img_size={image_size}{pool})"


def _clip_reference_class(name: str, config_model: dict, num_classes: int, image_size: int) -> str:
  spec = SPECS[name]
  model = {16: 'ViT-B-16', 32: 'ViT-B-32', 14: 'ViT-L-14'}[spec.patch] + ('-quickgelu' if spec.quick_gelu else '')
  projected = config_model.get('projection', True)
  features = spec.embed if projected else spec.width
  return (f"open_clip.create_model('{model}', force_image_size={image_size}).visual for the visual.* tensors "
          f"(without the prefix) and torch.nn.Linear({features}, {num_classes}) for head.*"
          + ('' if projected else ' (the features before proj: set visual.proj=None)'))


def _check_quick_gelu(name: str, meta: dict, path: str) -> None:
  """open_clip's config beside the weights says whether they use QuickGELU: it must be this model.name's."""
  quick = meta.get('model_cfg', {}).get('quick_gelu') if isinstance(meta.get('model_cfg'), dict) else None
  if quick is not None and bool(quick) != SPECS[name].quick_gelu:
    raise UsageError(f'{path} says the weights use {"QuickGELU" if quick else "GELU"}: model.name should be '
                     f'{name.removesuffix("_quickgelu") + ("_quickgelu" if quick else "")}.')


def _family(label: str, kind: str, reference_class, **kwargs) -> Family:
  return Family(label, tuple(n for n, spec in SPECS.items() if spec.family == kind), _build, _last_modules,
                input_statistics=lambda name: (SPECS[name].mean, SPECS[name].std),
                layout=lambda name, backbone: torch_layout.vit_layout(backbone, SPECS[name]),
                reference_class=reference_class, tune_modes=BASE_TUNE_MODES + ('lora', 'adapter'),
                added_modules=('lora_rank', 'adapter_dim'), patch_size=lambda name: SPECS[name].patch,
                check_metadata=_check_quick_gelu,
                kind_cpu_runtimes=(('avx2', 'no-ynnpack'), ('intel-avx512', 'hugepages')), **kwargs)


TIMM_FAMILY = _family("timm's ViT, DeiT and DINOv2", 'timm', _timm_reference_class, pools=('token', 'avg'))
CLIP_FAMILY = _family("CLIP's image tower", 'clip', _clip_reference_class)
