"""The jitted steps on their own: one backbone step against golden numbers and a hand-computed SGD update,
K heads trained together equal to K heads trained one by one, K backbones under vmap equal to each alone,
a frozen backbone left bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax import losses
from bwlm_jax.data.sampling import BatchSpec, device_batch
from bwlm_jax.models import LinearHead, Model
from bwlm_jax.models.resnet_cifar import CifarResNet
from bwlm_jax.train import optim
from bwlm_jax.train.state import TrainState
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.train.mixing import Mixing, Reweighting
from bwlm_jax.train.steps import HeadsFeed, Members, make_device_train_step, make_heads_step, stacked_copies
from helpers import assert_trees_equal

NUM_CLASSES, IMAGE, N, BATCH = 5, 8, 24, 8
SPEC = BatchSpec(batch_size=BATCH, steps_per_epoch=N // BATCH, augment=False, mean=(127.0,) * 3, std=(64.0,) * 3,
                 dtype=jnp.float32)
MODEL = Model(CifarResNet(1), LinearHead(NUM_CLASSES))


def _data():
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (N, IMAGE, IMAGE, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, N), jnp.int32)
  return images, labels


def _backbone_state(tx=None) -> TrainState:
  backbone, batch_stats = MODEL.init_backbone(jax.random.key(1), (IMAGE, IMAGE, 3))
  head = MODEL.init_head(jax.random.key(2), 64)
  head = {'dense': {**head['dense'], 'bias': jnp.linspace(-0.5, 0.5, NUM_CLASSES)}}  # not symmetric at step 0
  params = {'backbone': backbone, 'head': head}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=None if tx is None else tx.init(params), frozen={},
                    rng=jax.random.key_data(jax.random.key(3)))


def _stage_cfg(**overrides):
  values = dict(learning_rate=0.1, warmup_epochs=0, weight_decay=5e-3, momentum=0.9, nesterov=False)
  return type('StageConfig', (), {**values, **overrides})


def test_one_backbone_step_golden_numbers_and_hand_computed_update():
  cfg = _stage_cfg()
  tx, schedule = optim.stage_optimizer(cfg, 10 * SPEC.steps_per_epoch, SPEC.steps_per_epoch)
  images, labels = _data()
  state = _backbone_state(tx)
  before = jax.tree.map(np.asarray, state.params)

  # The hand computation: the step's batch, the gradient of CE, then SGD's first update p - lr (g + wd p).
  x, batch_labels = device_batch(state.rng, state.step, images, labels, SPEC, None)

  def loss_of(params):
    features, _ = MODEL.features(params['backbone'], state.batch_stats, x, train=True)
    return losses.cross_entropy(MODEL.logits(params['head'], features), batch_labels)

  expected_loss, grads = jax.value_and_grad(loss_of)(state.params)
  expected = jax.tree.map(lambda p, g: p - 0.1 * (g + 5e-3 * p), before, jax.device_get(grads))

  step = make_device_train_step(MODEL, tx, losses.cross_entropy, schedule, SPEC)
  new_state, metrics = step(state, images, labels)
  assert int(new_state.step) == 1
  np.testing.assert_allclose(float(metrics['loss']), float(expected_loss), rtol=1e-6)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
  # Golden numbers of this fixed state and batch (float32 on the CPU), so that a change of the batch, the
  # loss or the learning rate the step reports cannot pass unnoticed.
  # The second step adds momentum, the next batch and the cosine schedule's second value.
  second_state, second = step(new_state, images, labels)
  assert int(second_state.step) == 2
  np.testing.assert_allclose([float(metrics['loss']), float(second['loss'])], [2.2184553, 1.9807816], rtol=1e-5)
  assert [float(metrics['accuracy']), float(second['accuracy'])] == [0.25, 0.375]
  assert float(metrics['learning_rate']) == pytest.approx(0.1)
  total = 10 * SPEC.steps_per_epoch
  assert float(second['learning_rate']) == pytest.approx(0.1 * (1 + np.cos(np.pi / total)) / 2, rel=1e-6)


def test_k_backbones_in_one_vmapped_step_equal_each_trained_alone_with_mixup_smoothing_and_drw():
  total = 10 * SPEC.steps_per_epoch
  members = [dict(learning_rate=0.01, weight_decay=5e-3, label_smoothing=0.0),
             dict(learning_rate=0.003, weight_decay=5e-2, label_smoothing=0.2)]
  mixing, reweighting = Mixing(mixup_alpha=0.4, cutmix_alpha=1.0), Reweighting(2, jnp.linspace(0.5, 2.0, NUM_CLASSES))
  images, labels = _data()

  def optimizer(learning_rate, weight_decay):
    return optim.stage_optimizer(_stage_cfg(), total, SPEC.steps_per_epoch, learning_rate, weight_decay)

  alone = []
  for member in members:
    tx, schedule = optim.stage_optimizer(_stage_cfg(learning_rate=member['learning_rate'],
                                                    weight_decay=member['weight_decay']), total, SPEC.steps_per_epoch)
    step = make_device_train_step(MODEL, tx, losses.cross_entropy, schedule, SPEC,
                                  mixing=Mixing(0.4, 1.0, 1.0, member['label_smoothing']), reweighting=reweighting)
    state = _backbone_state(tx)
    for _ in range(4):  # DRW starts at step 2
      state, metrics = step(state, images, labels)
    alone.append((state, metrics))
  stacked = Members(*(jnp.asarray([m[f] for m in members], jnp.float32)
                      for f in ('learning_rate', 'weight_decay', 'label_smoothing')), optimizer=optimizer)
  tx, _ = optimizer(0.1, 5e-3)
  one = _backbone_state(tx)
  state = one.replace(**{name: stacked_copies(getattr(one, name), 2) for name in ('params', 'batch_stats', 'opt_state')})
  step = make_device_train_step(MODEL, None, losses.cross_entropy, None, SPEC, mixing=mixing, reweighting=reweighting,
                                members=stacked)
  for _ in range(4):
    state, metrics = step(state, images, labels)
  for k, (single, single_metrics) in enumerate(alone):
    np.testing.assert_allclose(metrics['loss'][k], single_metrics['loss'], rtol=1e-5)
    for got, want in zip(jax.tree.leaves((state.params, state.batch_stats)),
                         jax.tree.leaves((single.params, single.batch_stats)), strict=True):
      np.testing.assert_allclose(np.asarray(got)[k], np.asarray(want), rtol=1e-4, atol=1e-5)  # weights ~1: 10 ulp
  assert float(np.abs(np.asarray(state.params['head']['dense']['kernel'][0] -
                                 state.params['head']['dense']['kernel'][1])).max()) > 1e-3  # they differ


def _features():
  rng = np.random.default_rng(4)
  return (jnp.asarray(rng.normal(size=(N, 64)), jnp.float32),
          jnp.asarray(rng.integers(0, NUM_CLASSES, N), jnp.int32))


SETTINGS = [
    HeadSetting(loss='bfs', alpha=0.3, beta=0.99, gamma=1.0, weight_decay=5e-3, learning_rate=0.3, epochs=2,
                backbone='stage1'),
    HeadSetting(loss='ce', alpha=0.1, beta=0.9999, gamma=1.0, weight_decay=0.0, learning_rate=0.1, epochs=3,
                backbone='stage1'),
    HeadSetting(loss='cb_focal', alpha=0.1, beta=0.999, gamma=2.0, weight_decay=0.1, learning_rate=0.03, epochs=3,
                backbone='stage1'),
]
COUNTS = jnp.asarray([40.0, 20.0, 9.0, 4.0, 1.0])


def _heads_state(count: int, frozen=None) -> TrainState:
  head = LinearHead(NUM_CLASSES).init(jax.random.key(5), jnp.zeros((1, 64)))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params={'head': stacked_copies(head, count)}, batch_stats={},
                    opt_state=None, frozen=frozen or {}, rng=jax.random.key_data(jax.random.key(6)))


def _train_heads(settings, kind, data, labels, steps, frozen=None):
  step, init_opt_state = make_heads_step(MODEL, settings, _stage_cfg(), COUNTS,
                                         HeadsFeed(kind, SPEC))
  state = _heads_state(len(settings), frozen)
  state = state.replace(opt_state=init_opt_state(state.params))
  history = []
  for _ in range(steps):
    state, metrics = step(state, data, labels)
    history.append(jax.device_get(metrics))
  return state, history


def test_k_heads_together_equal_each_head_alone():
  features, labels = _features()
  steps = 3 * SPEC.steps_per_epoch  # past the first head's 2 epochs: it must stay where it ended
  together, history = _train_heads(SETTINGS, 'cached', features, labels, steps)
  for k, setting in enumerate(SETTINGS):
    alone, alone_history = _train_heads([setting], 'cached', features, labels, steps)
    for got, want in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params), strict=True):
      np.testing.assert_allclose(np.asarray(got)[k], np.asarray(want)[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose([h['loss'][k] for h in history], [h['loss'][0] for h in alone_history],
                               rtol=1e-6)
  # The 2-epoch head reached learning rate 0 at its last step and never moved after it.
  assert history[-1]['learning_rate'][0] == 0.0 and history[-1]['learning_rate'][1] > 0.0


def test_heads_step_leaves_the_frozen_backbone_bit_for_bit():
  images, labels = _data()
  backbone = _backbone_state()
  frozen = {'params': backbone.params['backbone'], 'batch_stats': backbone.batch_stats}
  copy = jax.tree.map(np.array, frozen)
  state, history = _train_heads(SETTINGS, 'device', images, labels, 2, jax.tree.map(jnp.copy, frozen))
  assert_trees_equal(state.frozen, copy)
  assert all(np.isfinite(h['loss']).all() for h in history)
  # The heads did move.
  assert not np.allclose(np.asarray(state.params['head']['dense']['kernel']), 0.0)
