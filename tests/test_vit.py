"""Vision Transformers against timm's and open_clip's own classes: the same features and logits for the
same weights (a fixture made by those classes), position embeddings resampled as they resample them,
weights in and out by name, the input each set of weights expects, one-line errors for weights that do
not fit, and runs on them end to end."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bwlm_jax import weights
from bwlm_jax.config import validate_config
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import LinearHead, Model, build_model, torch_layout
from bwlm_jax.models.vit import (CLIP, IMAGENET, LayerNorm, Spec, VisionTransformer, _dense, _dense_product,
                                  _materialized, attention, gelu)
from bwlm_jax.run.training_run import train_and_evaluate
from helpers import assert_equals_reference, random_backbone
from test_pretrained import _config, _folder

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'vit.npz')
# The fixture's networks (tests/data/make_vit_fixture.py): 16-pixel images, patch 4, width 16, 2 blocks
# of 2 heads, 5 classes; CLIP projects to 8.
NETWORKS = {'vit': (Spec('timm', 4, 16, 2, 2), 'token'), 'vit_avg': (Spec('timm', 4, 16, 2, 2), 'avg'),
            'dinov2_reg': (Spec('timm', 4, 16, 2, 2, layer_scale=True, registers=2), 'token'),
            'clip': (Spec('clip', 4, 16, 2, 2, quick_gelu=True, embed=8), 'token'),
            'clip_gelu': (Spec('clip', 4, 16, 2, 2, embed=8), 'token')}


def _state(data, name):
  prefix = f'{name}/state/'
  return {key[len(prefix):]: data[key] for key in data.files if key.startswith(prefix)}


def _load(name, size, projection=True):
  """(model, variables, layout) of fixture network `name` at `size` pixels, its weights read in."""
  spec, pool = NETWORKS[name]
  model = Model(VisionTransformer(spec, pool=pool, projection=projection), LinearHead(5))
  params, stats = model.init_backbone(jax.random.key(0), (size, size, 3))
  template = {'params': params, 'batch_stats': stats}
  layout = torch_layout.vit_layout(template, spec)
  return model, torch_layout.from_torch(_state(np.load(FIXTURE), name), template, layout, 'fixture'), layout


@pytest.mark.parametrize('name', ['vit', 'vit_avg', 'dinov2_reg'])
def test_timm_vits_equal_timms_features_and_logits_and_go_back_key_for_key(name):
  data = np.load(FIXTURE)
  state = _state(data, name)
  model, variables, layout = _load(name, 16)
  # float32 through two blocks (attention, GELU, LayerNorms) of two libraries: agreement to float32 rounding.
  assert_equals_reference(model, variables, layout, state, data['images16'], data[f'{name}/features'],
                          data[f'{name}/logits'], 'head', rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize('name', ['vit', 'dinov2_reg', 'clip'])
def test_position_embeddings_of_another_grid_are_resampled_as_timm_and_open_clip_do(name):
  data = np.load(FIXTURE)
  model, variables, _ = _load(name, 8)  # the weights' 4x4 grid onto 2x2
  features, _ = model.features(variables['params'], variables['batch_stats'], data['images8'], train=False)
  np.testing.assert_allclose(features, data[f'{name}_half/features'], rtol=1e-5, atol=2e-5)
  position = variables['params']['positional_embedding' if name == 'clip' else 'pos_embed']
  assert np.shape(position)[-2] == 4 + (0 if name == 'dinov2_reg' else 1)  # the class token's row kept


@pytest.mark.parametrize('name', ['clip', 'clip_gelu'])
def test_clip_towers_equal_open_clips_projected_and_pooled_features(name):
  data = np.load(FIXTURE)
  state = _state(data, name)
  for projection, expected in ((True, data[f'{name}/features']), (False, data[f'{name}/pooled'])):
    model, variables, layout = _load(name, 16, projection)
    features, _ = model.features(variables['params'], variables['batch_stats'], data['images16'], train=False)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=2e-5)
    assert features.shape[-1] == (8 if projection else 16)
  back = torch_layout.to_torch(variables, None, layout)
  assert sorted(back) == sorted(state) and 'visual.transformer.resblocks.1.attn.in_proj_weight' in back
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_a_whole_clip_model_gives_its_image_tower_and_a_text_tower_alone_is_refused():
  state = _state(np.load(FIXTURE), 'clip')
  text = {'token_embedding.weight': np.zeros((10, 16), np.float32), 'text_projection': np.zeros((16, 8), np.float32),
          'transformer.resblocks.0.ln_1.weight': np.ones(16, np.float32), 'logit_scale': np.zeros((), np.float32)}
  spec, _ = NETWORKS['clip']
  model = Model(VisionTransformer(spec), LinearHead(5))
  params, stats = model.init_backbone(jax.random.key(0), (16, 16, 3))
  template = {'params': params, 'batch_stats': stats}
  layout = torch_layout.vit_layout(template, spec)
  whole = torch_layout.from_torch({**state, **text}, template, layout, 'whole.safetensors')
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(
      torch_layout.from_torch(state, template, layout, 'tower')), strict=True))
  tower = torch_layout.from_torch({k[len('visual.'):]: v for k, v in state.items()}, template, layout, 'alone')
  assert jax.tree.structure(tower) == jax.tree.structure(whole)  # the tower saved without its prefix
  with pytest.raises(UsageError, match=r"text.safetensors is CLIP's text tower \(token_embedding.weight\), not an "
                                       r'image tower: give the whole CLIP model or its visual.\* tensors'):
    torch_layout.from_torch(text, template, layout, 'text.safetensors')


def test_the_networks_have_their_sources_parameter_counts():
  # Counted by timm 1.0.31 and open_clip 3.3.0 (tests/data/compare_timm_open_clip.py), all at 224 px: timm's 1000-class
  # ViT-B/16, DINOv2 ViT-S/14 without and with 4 registers (no head), open_clip's ViT-B-16 image tower.
  for name, size, classes, count in (('vit_base_patch16', 224, 1000, 86_567_656),
                                     ('vit_small_patch14_dinov2', 224, 0, 21_628_800),
                                     ('vit_small_patch14_reg4_dinov2', 224, 0, 21_629_952),
                                     ('clip_vit_b16', 224, 0, 86_192_640)):
    model = build_model({'name': name, 'dtype': 'float32'}, max(classes, 1))
    head = (model.feature_dim((size, size, 3)) + 1) * max(classes, 1) if not classes else 0
    assert model.parameter_count((size, size, 3)) - head == count, name


def _vit_weights(path, name, size=32, num_classes=1000):
  """A weights file of `name` in its source's layout with random values (what a downloaded one looks
  like: timm's 1000-class head; CLIP without one)."""
  model = build_model({'name': name, 'dtype': 'float32'}, num_classes)
  backbone = random_backbone(model, (size, size, 3))
  head = None if name.startswith('clip') else model.init_head(jax.random.key(2), model.feature_dim((size, size, 3)))
  save_file(torch_layout.to_torch(backbone, head, weights.torch_layout_of(name, backbone)), str(path))
  return backbone


def test_weights_of_another_network_or_size_are_one_error(tmp_path):
  _vit_weights(tmp_path / 'tiny.safetensors', 'vit_tiny_patch16')
  small = build_model({'name': 'vit_small_patch16', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r'tiny.safetensors does not fit this backbone \(shape mismatch: '
                                       r'blocks.0.attn.proj.weight \(192, 192\) \(expected \(384, 384\)\), .* and 142 '
                                       r'more\). Check model.name'):
    weights.pretrained_backbone(str(tmp_path / 'tiny.safetensors'), small, (32, 32, 3), 'vit_small_patch16')
  clip = build_model({'name': 'clip_vit_b32', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r"tiny.safetensors holds none of this backbone's tensors \(expected names "
                                       r'like class_embedding, conv1.weight, .*found blocks.0.attn.proj.bias'):
    weights.pretrained_backbone(str(tmp_path / 'tiny.safetensors'), clip, (32, 32, 3), 'clip_vit_b32')
  avg = Model(VisionTransformer(Spec('timm', 16, 192, 12, 3), pool='avg'), LinearHead(7))
  with pytest.raises(UsageError, match=r'missing: fc_norm.weight, fc_norm.bias; unknown: norm.bias, norm.weight'):
    weights.pretrained_backbone(str(tmp_path / 'tiny.safetensors'), avg, (32, 32, 3), 'vit_tiny_patch16')


def test_the_input_comes_with_the_weights(tmp_path):
  assert weights.input_statistics('vit_base_patch16')[:2] == ((0.5,) * 3, (0.5,) * 3)  # timm's augreg weights
  assert weights.input_statistics('deit_small_patch16')[:2] == (IMAGENET['mean'], IMAGENET['std'])
  assert weights.input_statistics('vit_small_patch14_dinov2')[:2] == (IMAGENET['mean'], IMAGENET['std'])
  assert weights.input_statistics('clip_vit_b16_quickgelu')[:2] == (CLIP['mean'], CLIP['std'])
  (tmp_path / 'hub').mkdir()
  path = str(tmp_path / 'hub' / 'model.safetensors')
  with open(tmp_path / 'hub' / 'config.json', 'w') as f:  # as the Hugging Face hub stores timm's weights
    json.dump({'architecture': 'vit_base_patch16_224', 'pretrained_cfg': {'mean': [0.1, 0.2, 0.3],
                                                                         'std': [0.4, 0.5, 0.6]}}, f)
  assert weights.input_statistics('vit_base_patch16', path) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6),
                                                                str(tmp_path / 'hub' / 'config.json'))
  with pytest.raises(UsageError, match=r'config.json says the weights beside it are a vit_base_patch16_224, not '
                                       r'model.name=deit_base_patch16'):
    weights.input_statistics('deit_base_patch16', path)
  os.remove(tmp_path / 'hub' / 'config.json')
  with open(tmp_path / 'hub' / 'open_clip_config.json', 'w') as f:  # open_clip's, on the hub
    json.dump({'model_cfg': {'quick_gelu': True}, 'preprocess_cfg': {'mean': [0.5] * 3, 'std': [0.25] * 3}}, f)
  assert weights.input_statistics('clip_vit_b16_quickgelu', path)[:2] == ((0.5,) * 3, (0.25,) * 3)
  with pytest.raises(UsageError, match=r'the weights use QuickGELU: model.name should be clip_vit_b16_quickgelu'):
    weights.input_statistics('clip_vit_b16', path)


def test_a_config_whose_images_do_not_tile_into_patches_is_refused_early():
  config = _config('/nowhere', '/nowhere.safetensors')
  config.model.name, config.data.image_size = 'vit_small_patch14_dinov2', 64
  with pytest.raises(UsageError, match=r"data.image_size=64 is not a multiple of vit_small_patch14_dinov2's patch "
                                       r'size 14: use 56 or 70'):
    validate_config(config)
  config.model.name, config.model.pool = 'clip_vit_b16', 'avg'
  with pytest.raises(UsageError, match=r"model.pool='avg' is for timm's ViTs; clip_vit_b16 pools its own way"):
    validate_config(config)


@pytest.mark.parametrize('name', ['clip_vit_b32_quickgelu'])  # timm's ViTs end to end: test_tuning's LoRA run
def test_bwlm_on_a_frozen_vit_with_its_own_input_and_the_export_reads_back(tmp_path, name):
  _folder(tmp_path / 'data', [12, 6, 3])
  expected = _vit_weights(tmp_path / 'weights.safetensors', name)
  config = _config(tmp_path / 'data', tmp_path / 'weights.safetensors')
  config.model.name = name
  train_and_evaluate(config, str(tmp_path / 'run'))
  from bwlm_jax.checkpoints import load_finished
  variables, meta = load_finished(str(tmp_path / 'run'), 'stage2')
  for a, b in zip(jax.tree.leaves(variables['backbone']), jax.tree.leaves(expected['params']), strict=True):
    np.testing.assert_array_equal(a, b)  # frozen as it came
  expected_input = CLIP if name.startswith('clip') else {'mean': (0.5,) * 3, 'std': (0.5,) * 3}
  np.testing.assert_allclose(meta['mean'], expected_input['mean'])
  np.testing.assert_allclose(meta['std'], expected_input['std'])
  sidecar = weights.export_model(variables, name, meta, str(tmp_path / 'out.safetensors'))
  state = load_file(str(tmp_path / 'out.safetensors'))
  if name.startswith('clip'):
    assert sidecar['pytorch'].startswith("open_clip.create_model('ViT-B-32-quickgelu', force_image_size=32).visual")
    assert state['head.weight'].shape == (3, 512) and state['visual.proj'].shape == (768, 512)
  else:
    assert sidecar['pytorch'] == "timm.create_model('vit_tiny_patch16_224', num_classes=3, img_size=32)"
    assert state['head.weight'].shape == (3, 192) and state['pos_embed'].shape == (1, 5, 192)
  back = weights.pretrained_backbone(str(tmp_path / 'out.safetensors'), build_model(meta['config']['model'], 3),
                                     (32, 32, 3), name)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back['params']),
                                                   jax.tree.leaves(variables['backbone']), strict=True))
  assert weights.input_statistics(name, str(tmp_path / 'out.safetensors'))[2].endswith('out.safetensors.json')


@pytest.mark.parametrize('causal', [False, True])
def test_attention_equals_jaxs_with_and_without_a_gradient(causal):
  # Both of vit.attention's paths (heads leading without a gradient, XLA's layout under one) against
  # jax.nn.dot_product_attention on q, k, v sliced from the same projection output.
  batch, tokens, heads, width = 3, 7, 2, 8
  qkv = jax.random.normal(jax.random.key(1), (batch, tokens, 3 * heads * width))
  cotangent = jax.random.normal(jax.random.key(2), (batch, tokens, heads * width))

  def reference(x):
    q, k, v = (x.reshape(batch, tokens, 3, heads, width)[:, :, i] for i in range(3))
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(batch, tokens, heads * width)

  expected, expected_vjp = jax.vjp(reference, qkv)
  np.testing.assert_allclose(jax.jit(attention, static_argnums=(1, 2))(qkv, heads, causal), expected, atol=1e-6)
  got, got_vjp = jax.vjp(lambda x: attention(x, heads, causal), qkv)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  np.testing.assert_allclose(got_vjp(cotangent)[0], expected_vjp(cotangent)[0], atol=1e-5)
  if causal:  # the first token sees only itself: its output is its own v
    np.testing.assert_allclose(got[:, 0], qkv[:, 0, 2 * heads * width:], atol=1e-6)
  # Under vmap (stacked backbones) as well.
  stacked = jax.vmap(jax.grad(lambda x: jnp.sum(attention(x, heads, causal) * cotangent)))(qkv[None])
  np.testing.assert_allclose(stacked[0], expected_vjp(cotangent)[0], atol=1e-5)


def test_gelu_is_the_exact_one():
  x = np.linspace(-8, 8, 101, dtype=np.float32)
  np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
  np.testing.assert_allclose(gelu(np.float32([1.0])), [0.8413447], rtol=1e-6)  # x * Phi(x), Phi(1) by table
  np.testing.assert_allclose(jax.grad(lambda v: gelu(v).sum())(x), jax.grad(
      lambda v: jax.nn.gelu(v, approximate=False).sum())(x), atol=1e-6)


def test_a_materialized_layernorm_output_is_the_identity_with_and_without_a_gradient():
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(jax.jit(_materialized)(x), x)
  np.testing.assert_array_equal(jax.grad(lambda v: (_materialized(v) * x).sum())(x), x)


@pytest.mark.parametrize('shape', [(5, 3), (2, 5, 3), (2, 2, 4, 3)])
def test_the_dense_product_and_its_gradients_are_autodiffs(shape):
  rng = np.random.default_rng(0)
  x, kernel = rng.standard_normal(shape, np.float32), rng.standard_normal((3, 4), np.float32)
  g = rng.standard_normal(shape[:-1] + (4,), np.float32)
  ours = jax.vjp(_dense_product, x, kernel)
  theirs = jax.vjp(lambda a, b: a @ b, x, kernel)
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
  for got, want in zip(ours[1](g), theirs[1](g)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The kernel's gradient by hand: a sum over every token of x outer g.
  by_hand = np.einsum('ni,nj->ij', x.reshape(-1, 3), g.reshape(-1, 4))
  np.testing.assert_allclose(ours[1](g)[1], by_hand, rtol=1e-5, atol=1e-5)


def test_a_vit_dense_layer_is_flaxs_with_its_own_gradient_in_both_dtypes():
  x = np.random.default_rng(1).standard_normal((2, 3, 8), np.float32)
  for dtype in (jnp.float32, jnp.bfloat16):
    ours = _dense(5, dtype, 'fc')
    theirs = nn.Dense(5, dtype=dtype, kernel_init=nn.initializers.xavier_uniform(), name='fc')
    params = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
    loss = lambda module: lambda p: (module.apply(p, x).astype(jnp.float32) ** 2).sum()  # noqa: E731
    np.testing.assert_allclose(ours.apply(params, x).astype(np.float32), theirs.apply(params, x).astype(np.float32))
    got, want = jax.grad(loss(ours))(params), jax.grad(loss(theirs))(params)
    tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert a.dtype == b.dtype == jnp.float32
      np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape', [(4, 6), (2, 3, 6)])
def test_layernorm_is_flaxs_in_values_and_gradients(shape, dtype):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal(shape, np.float32) * 3 + 1)
  ours, theirs = LayerNorm(1e-6, dtype), nn.LayerNorm(1e-6, dtype=dtype)
  params = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(jnp.shape, params)
  params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape, np.float32)), params)
  assert ours.apply(params, x).dtype == theirs.apply(params, x).dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(ours.apply(params, x).astype(np.float32), theirs.apply(params, x).astype(np.float32),
                             rtol=tolerance, atol=tolerance)
  cotangent = jnp.asarray(rng.standard_normal(shape, np.float32))
  loss = lambda module: lambda p, v: (module.apply(p, v).astype(jnp.float32) * cotangent).sum()  # noqa: E731
  for got, want in zip(jax.tree.leaves(jax.grad(loss(ours), (0, 1))(params, x)),
                       jax.tree.leaves(jax.grad(loss(theirs), (0, 1))(params, x))):
    np.testing.assert_allclose(got, want, rtol=tolerance * 10, atol=tolerance * 10)
  # By hand: [1, 2, 3] has mean 2 and variance 2/3.
  row = jnp.asarray([[1.0, 2.0, 3.0]])
  plain = LayerNorm(0.0).apply({'params': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)}}, row)
  np.testing.assert_allclose(plain, [[-1.5 ** 0.5, 0.0, 1.5 ** 0.5]], rtol=1e-6)
