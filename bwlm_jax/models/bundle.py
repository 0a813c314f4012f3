"""The model of a run: a backbone and a classifier head (linear or cosine), with the functions inference needs."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax import stages
from bwlm_jax.data import device_pipeline
from bwlm_jax.models.head import head_kernel, kind_of, make_head


@dataclasses.dataclass(frozen=True)
class Model:
  backbone: nn.Module
  head: nn.Module

  def init_backbone(self, key, image_shape):
    variables = self.backbone.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    return variables['params'], variables.get('batch_stats', {})

  def init_head(self, key, feature_dim: int):
    return self.head.init(key, jnp.zeros((1, feature_dim), jnp.float32))['params']

  def features(self, backbone_params, batch_stats, images, train: bool):
    """(features, updated batch_stats); batch_stats only change when train is True."""
    variables = {'params': backbone_params, 'batch_stats': batch_stats}
    if train:
      features, updates = self.backbone.apply(variables, images, train=True, mutable=['batch_stats'])
      return features, updates['batch_stats']
    return self.backbone.apply(variables, images, train=False), batch_stats

  def logits(self, head_params, features):
    return self.head.apply({'params': head_params}, features)

  def parameter_count(self, image_shape) -> int:
    """Trainable parameters of backbone and head (BatchNorm statistics not counted): 470,004 for
    ResNet-32 with 100 classes."""
    def count(tree):
      return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    backbone, _ = jax.eval_shape(lambda k: self.init_backbone(k, image_shape), jax.random.key(0))
    head = jax.eval_shape(lambda k: self.init_head(k, self.feature_dim(image_shape)), jax.random.key(0))
    return count(backbone) + count(head)

  def feature_dim(self, image_shape) -> int:
    shapes = jax.eval_shape(lambda k: self.init_backbone(k, image_shape), jax.random.key(0))
    out = jax.eval_shape(lambda p, s: self.features(p, s, jnp.zeros((1,) + tuple(image_shape)), False)[0],
                         *shapes)
    return int(out.shape[-1])


def inference_variables(stage: str, state) -> dict:
  """{'backbone', 'batch_stats', 'head'} of a trained state: a TrainState, or the dict a checkpoint restores.

  Stage 2 trains only the head; its backbone is the frozen one it was given.
  """
  get = state.__getitem__ if isinstance(state, dict) else functools.partial(getattr, state)
  if stages.get(stage).trains_heads:
    frozen = get('frozen')
    return {'backbone': frozen['params'], 'batch_stats': frozen['batch_stats'], 'head': get('params')['head']}
  params = get('params')
  return {'backbone': params['backbone'], 'batch_stats': get('batch_stats'), 'head': params['head']}


def make_features_fn(model: Model, mean, std, dtype, views: str = 'none'):
  """features(variables, images) -> float32 features [B, D]; uint8 images are normalised first. With `views`
  (`test_views`: flip, five_crop, ten_crop), [B, V, D]: the features of each view of each image, one view at a
  time through the backbone (the memory of one plain batch).

  `variables` are inference variables (`inference_variables`); only the backbone's are used, and
  BatchNorm runs in inference mode.
  """
  @jax.jit
  def backbone_features(backbone, images):
    if images.dtype == jnp.uint8:
      x = device_pipeline.normalize(images, mean, std, dtype)
    else:
      x = images.astype(dtype)

    def one(view):
      out, _ = model.features(backbone['backbone'], backbone['batch_stats'], view, train=False)
      return out.astype(jnp.float32)

    if views == 'none':
      return one(x)
    return jnp.moveaxis(jax.lax.map(one, test_views(x, views)), 0, 1)

  def features(variables, images):
    return backbone_features({'backbone': variables['backbone'], 'batch_stats': variables['batch_stats']}, images)

  return features


# Test-time views of an image (`data.test_views`); five_crop and ten_crop follow LIFT (Shi et al. 2024): the
# image resized to 248/224 of its side (224 -> 248), the four corner crops and the centre crop of its side.
TEST_VIEWS = ('none', 'flip', 'five_crop', 'ten_crop')
CROP_RESIZE = 248 / 224


def test_views(images, kind: str):
  """[V, B, S, S, C] views of images [B, S, S, C] (normalised, float): `kind` in TEST_VIEWS."""
  if kind == 'none':
    return images[None]
  flipped = images[:, :, ::-1]
  if kind == 'flip':
    return jnp.stack([images, flipped])
  batch, side, _, channels = images.shape
  big = int(round(side * CROP_RESIZE))
  resized = jax.image.resize(images, (batch, big, big, channels), 'bilinear').astype(images.dtype)
  far, middle = big - side, int(round((big - side) / 2))
  crops = [resized[:, top:top + side, left:left + side]
           for top, left in ((0, 0), (0, far), (far, 0), (far, far), (middle, middle))]
  if kind == 'ten_crop':
    crops += [crop[:, :, ::-1] for crop in crops]
  return jnp.stack(crops)


@functools.lru_cache(maxsize=None)
def _jitted_head(num_classes: int, kind: str):
  return jax.jit(lambda params, features: make_head(kind, num_classes).apply({'params': params}, features))


def head_logits(head_params: dict, features) -> np.ndarray:
  """Logits [N, C] of a model's head (its kind read off its parameters) on features [N, D], as float32 NumPy;
  features of several views of each image [N, V, D] give the mean of the views' logits."""
  num_classes = int(np.shape(head_kernel(head_params))[-1])
  logits = np.asarray(_jitted_head(num_classes, kind_of(head_params))(head_params, jnp.asarray(features, jnp.float32)))
  return logits.mean(axis=1) if logits.ndim == 3 else logits
