"""Test-time ensembling (`data.test_views`): the views against a hand computation, the views' logits averaged, only
evaluation splits ensembled, and a run end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax.models import build_model, head_logits, make_features_fn
from bwlm_jax.models.bundle import test_views as views_of
from bwlm_jax.runtime.errors import UsageError
from helpers import tiny_config


def test_flip_and_crops_are_where_lift_takes_them():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 224, 224, 3)), jnp.float32)
  np.testing.assert_array_equal(views_of(images, 'none')[0], images)
  flip = views_of(images, 'flip')
  np.testing.assert_array_equal(flip[1], images[:, :, ::-1])
  crops = views_of(images, 'five_crop')
  assert crops.shape == (5, 2, 224, 224, 3)
  resized = jax.image.resize(images, (2, 248, 248, 3), 'bilinear')  # 224 + 24, as LIFT resizes
  for view, (top, left) in enumerate(((0, 0), (0, 24), (24, 0), (24, 24), (12, 12))):
    np.testing.assert_array_equal(crops[view], resized[:, top:top + 224, left:left + 224])
  ten = views_of(images, 'ten_crop')
  np.testing.assert_array_equal(ten[:5], crops)
  np.testing.assert_array_equal(ten[5:], crops[:, :, :, ::-1])


def test_the_views_logits_are_averaged():
  rng = np.random.default_rng(1)
  head = {'dense': {'kernel': rng.normal(size=(4, 3)), 'bias': rng.normal(size=3)}}
  features = rng.normal(size=(5, 2, 4))
  expected = np.mean([features[:, v] @ head['dense']['kernel'] + head['dense']['bias'] for v in range(2)], axis=0)
  np.testing.assert_allclose(head_logits(head, features), expected, rtol=1e-5, atol=1e-5)


def test_features_of_each_view_are_the_backbones_on_that_view():
  model = build_model({'name': 'resnet8', 'dtype': 'float32'}, 3)
  params, stats = model.init_backbone(jax.random.key(0), (32, 32, 3))
  variables = {'backbone': params, 'batch_stats': stats}
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
  plain = make_features_fn(model, mean, std, jnp.float32)
  both = np.asarray(make_features_fn(model, mean, std, jnp.float32, 'flip')(variables, images))
  assert both.shape == (3, 2, 64)
  np.testing.assert_allclose(both[:, 0], plain(variables, images), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(both[:, 1], plain(variables, images[:, :, ::-1]), rtol=1e-5, atol=1e-5)


def test_a_run_with_flipped_views_end_to_end(tfds_dir, tmp_path):
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.config import validate_config
  from bwlm_jax.run.training_run import make_context, train_and_evaluate
  config = tiny_config(tfds_dir, epochs=1)
  config.stages, config.data.test_views = 'naive', 'flip'
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['test_views'] == 'flip'
  variables, _ = load_finished(str(tmp_path / 'run'), 'naive')
  ctx = make_context(config, str(tmp_path / 'fresh'))
  test = ctx.dataset.eval_splits()['test']
  plain = make_features_fn(ctx.model, ctx.dataset.mean, ctx.dataset.std, jnp.float32)
  logits = [head_logits(variables['head'], plain(variables, images)) for images in (test.images,
                                                                                     test.images[:, :, ::-1])]
  accuracy = float((np.mean(logits, axis=0).argmax(1) == test.labels).mean())
  assert results['models']['naive']['test']['all'] == pytest.approx(accuracy)
  train_features, _ = ctx.split_features(variables, ctx.dataset.train)  # training images: never ensembled
  assert train_features.ndim == 2
  config.data.test_views = 'twenty_crop'
  with pytest.raises(UsageError, match="data.test_views must be one of \\('none', 'flip', 'five_crop', 'ten_crop'\\)"):
    validate_config(config)
