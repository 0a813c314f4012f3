"""The classifier heads: the cosine head against a hand computation, what weight decay does to it, its scale held
fixed, and a run with it end to end (stage 2's grid, evaluation, post-hoc methods); the linear head unchanged."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bwlm_jax.models import head as heads
from bwlm_jax.models import head_logits
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.train import optim
from helpers import small_grid, tiny_config


def _cosine(rng, features=6, classes=4, scale=25.0):
  kernel, bias = rng.normal(size=(features, classes)), rng.normal(size=classes)
  return heads.head_params('cosine', kernel, bias, scale), kernel, bias


def test_cosine_logits_are_the_scaled_cosines_plus_bias():
  rng = np.random.default_rng(0)
  params, kernel, bias = _cosine(rng)
  x = rng.normal(size=(5, 6)) * rng.uniform(0.1, 10, size=(5, 1))
  expected = np.array([[25.0 * (f @ kernel[:, c]) / np.linalg.norm(f) / np.linalg.norm(kernel[:, c]) + bias[c]
                        for c in range(4)] for f in x])
  np.testing.assert_allclose(heads.apply_head(params, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(head_logits(params, x), expected, rtol=1e-5, atol=1e-5)  # evaluation's path
  module = heads.make_head('cosine', 4, scale=25.0)
  np.testing.assert_allclose(module.apply({'params': params}, jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5)
  assert set(module.init(jax.random.key(0), jnp.zeros((1, 6)))['params']['cosine']) == {'kernel', 'bias', 'scale'}


def test_weight_decay_does_not_reach_a_cosine_heads_logits():
  # Its logits do not depend on a class's weight norm, and the gradient is orthogonal to each class's weights:
  # decay shrinks the norms and nothing else.
  rng = np.random.default_rng(1)
  params, kernel, _ = _cosine(rng)
  x, labels = jnp.asarray(rng.normal(size=(8, 6))), jnp.asarray(rng.integers(0, 4, 8))
  rescaled = heads.with_weights(params, kernel * rng.uniform(0.1, 5.0, size=(1, 4)))
  np.testing.assert_allclose(heads.apply_head(rescaled, x), heads.apply_head(params, x), rtol=1e-5, atol=1e-5)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(heads.apply_head(p, x), labels).mean()
  grads = jax.grad(loss)(params)['cosine']
  np.testing.assert_allclose(np.sum(np.asarray(grads['kernel']) * kernel, axis=0), 0.0, atol=1e-5)
  assert np.abs(grads['kernel']).max() > 1e-3 and float(grads['scale']) == 0.0  # the scale takes no gradient


def test_the_scale_is_never_decayed_and_the_rest_decays_as_optax():
  rng = np.random.default_rng(2)
  params, _, _ = _cosine(rng)
  tree = {'head': params, 'backbone': {'norm': {'scale': jnp.ones(3), 'bias': jnp.zeros(3)}}}
  grads = jax.tree.map(jnp.zeros_like, tree)
  ours, _ = optim.decayed_weights(0.1).update(grads, optax.EmptyState(), tree)
  reference, _ = optax.add_decayed_weights(0.1).update(grads, optax.EmptyState(), tree)
  assert float(ours['head']['cosine']['scale']) == 0.0 and float(reference['head']['cosine']['scale']) != 0.0
  for path in (('head', 'cosine', 'kernel'), ('head', 'cosine', 'bias'), ('backbone', 'norm', 'scale')):
    np.testing.assert_array_equal(_at(ours, path), _at(reference, path))  # a LayerNorm's scale still decays
  tx = optim.sgd(lambda step: 0.5, 0.1, 0.9, False)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, tree), tx.init(tree), tree)
  assert float(updates['head']['cosine']['scale']) != 0.0  # a gradient would move it: apply_head stops it


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


@pytest.mark.parametrize('field,value,message', [
    ('head', 'arcface', "model.head must be one of \\('linear', 'cosine'\\), got 'arcface'"),
    ('head_scale', 0.0, 'model.head_scale must be > 0')])
def test_bad_head_fields_are_one_line(tfds_dir, field, value, message):
  from bwlm_jax.config import validate_config
  config = tiny_config(tfds_dir)
  config.model[field] = value
  with pytest.raises(UsageError, match=message):
    validate_config(config)


def test_a_cosine_head_run_end_to_end(tfds_dir, tmp_path):
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.weights import export_model
  from bwlm_jax.evaluation.workdir_reports import report_workdir
  from bwlm_jax.data import load_dataset
  from bwlm_jax.run.training_run import train_and_evaluate
  config = small_grid(tiny_config(tfds_dir, epochs=1), learning_rate=(0.05, 0.2), alpha=(0.0, 0.5))
  config.model.head, config.model.head_scale = 'cosine', 16.0
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  for stage in ('naive', 'stage1', 'stage2'):
    variables, _ = load_finished(str(tmp_path / 'run'), stage)
    assert heads.kind_of(variables['head']) == 'cosine'
    assert float(variables['head']['cosine']['scale']) == 16.0  # trained, never moved
    assert 0.0 <= results['models'][stage]['test']['all'] <= 1.0
  assert len(results['stage2_selection']['candidates']) == 8  # 2 learning rates x 2 alphas x 2 backbones
  summary = report_workdir(config, str(tmp_path / 'run'), load_dataset(config.data), ['naive'])
  assert 'tau_norm' in summary['naive']['splits']['test']['posthoc']
  with pytest.raises(UsageError, match='has a cosine head'):
    export_model(variables, 'resnet8', {'config': config.to_dict()}, str(tmp_path / 'out.safetensors'))
  with open(tmp_path / 'run' / 'config.json') as file:
    assert json.load(file)['model']['head'] == 'cosine'
