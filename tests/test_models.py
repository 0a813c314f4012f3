"""Backbones: parameter counts of the standard architectures, feature shapes, option-A shortcuts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax.models import LinearHead, build_backbone
from bwlm_jax.models.resnet_cifar import BasicBlockA


def _param_count(name, size, classes):
  backbone = build_backbone(name)
  variables = jax.eval_shape(lambda k: backbone.init(k, jnp.zeros((1, size, size, 3)), train=False),
                             jax.random.key(0))
  features = jax.eval_shape(lambda v: backbone.apply(v, jnp.zeros((1, size, size, 3)), train=False), variables)
  head = jax.eval_shape(lambda k: LinearHead(classes).init(k, jnp.zeros(features.shape)), jax.random.key(0))
  count = sum(x.size for x in jax.tree_util.tree_leaves((variables['params'], head)))
  return count, features.shape[-1]


@pytest.mark.parametrize('name,size,classes,expected,feature_dim', [
    ('resnet32', 32, 100, 470_004, 64),       # "about 0.47 M" (He et al.; LDAM-DRW)
    ('resnet20', 32, 10, 269_722, 64),        # 0.27 M in He et al. table 6
    ('resnext50', 224, 1000, 25_028_904, 2048),  # torchvision resnext50_32x4d
    ('resnet50', 224, 1000, 25_557_032, 2048),   # torchvision resnet50
])
def test_parameter_counts(name, size, classes, expected, feature_dim):
  count, dim = _param_count(name, size, classes)
  assert count == expected
  assert dim == feature_dim


def test_option_a_shortcut_subsamples_and_zero_pads():
  block = BasicBlockA(channels=8, stride=2)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  variables = block.init(jax.random.key(1), x, train=False)
  # Zero the residual branch: the output is relu(shortcut) alone.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if 'scale' in jax.tree_util.keystr(path) else v, variables)
  out = block.apply(zeroed, x, train=False)
  assert out.shape == (2, 3, 3, 8)
  expected = np.maximum(np.pad(np.asarray(x)[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (2, 2))), 0)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_unknown_model_and_dtype():
  with pytest.raises(ValueError, match="unknown model.name='vgg'"):
    build_backbone('vgg')
  with pytest.raises(ValueError, match='model.dtype must be one of'):
    build_backbone('resnet8', 'float16')
