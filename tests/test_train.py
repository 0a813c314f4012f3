"""Two-stage training: resume equals an uninterrupted run, frozen backbone, masked decay, config checks."""

import importlib.metadata
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bwlm_jax.runtime import process_setup
from bwlm_jax.data import long_tail_counts
from bwlm_jax.train import optim
from bwlm_jax.checkpoints import read_latest, stage_directory
from bwlm_jax.run.training_run import train_and_evaluate
from bwlm_jax.runtime.errors import Interrupted, RunError, UsageError
from helpers import assert_trees_equal, tiny_config as tiny_config_for


def _tiny_config(tfds_dir):
  config = tiny_config_for(tfds_dir)
  config.stages = 'stage1,stage2'
  config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  return config


@pytest.fixture
def tiny_config(tfds_dir):
  return _tiny_config(tfds_dir)


def _restore(workdir, stage):
  return read_latest(stage_directory(workdir, stage))


@pytest.fixture(scope='module')
def uninterrupted(tfds_dir, tmp_path_factory):
  """One reference run shared by the tests of this module (they only read it)."""
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  return workdir, train_and_evaluate(_tiny_config(tfds_dir), workdir)


def test_resume_equals_uninterrupted_run(tiny_config, uninterrupted, tmp_path):
  reference_dir, reference = uninterrupted
  workdir = str(tmp_path)
  with pytest.raises(Interrupted, match='stage1: stopped after step 3'):
    train_and_evaluate(tiny_config, workdir, stop_after_steps=3)
  state, meta = _restore(workdir, 'stage1')
  assert meta['step'] == 3 and not meta['finished'] and int(state['step']) == 3
  with pytest.raises(Interrupted, match='stage2: stopped after step 2'):
    train_and_evaluate(tiny_config, workdir, stop_after_steps=15)  # 13 steps end stage 1, 2 more
  results = train_and_evaluate(tiny_config, workdir)
  for stage in ('stage1', 'stage2'):
    resumed_state, resumed_meta = _restore(workdir, stage)
    reference_state, _ = _restore(reference_dir, stage)
    assert resumed_meta['finished']
    assert_trees_equal(resumed_state, reference_state)  # bitwise on CPU
  assert results['models'] == reference['models']


def test_stage2_freezes_backbone_and_trains_head(uninterrupted):
  workdir, results = uninterrupted
  stage1, _ = _restore(workdir, 'stage1')
  stage2, meta = _restore(workdir, 'stage2')
  assert_trees_equal(stage2['frozen']['params'], stage1['params']['backbone'])
  assert_trees_equal(stage2['frozen']['batch_stats'], stage1['batch_stats'])
  assert set(stage2['params']) == {'head'}  # only the head has an optimizer state
  steps_per_epoch = -(-meta['total_steps'] // 2)
  assert meta['total_steps'] == 2 * steps_per_epoch
  kernel = stage2['params']['head']['dense']['kernel']
  assert kernel.shape == (64, 20)


def test_results_file_has_groups_counts_and_absent_many(uninterrupted):
  workdir, results = uninterrupted
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['models'] == json.loads(json.dumps(results['models']))
  assert saved['train_counts'] == long_tail_counts(20, 40, 10.0).tolist()
  test = saved['models']['stage2']['test']
  assert test['many'] is None  # no class has > 100 images: absent, not 0 %
  assert test['medium'] is not None and test['few'] is not None
  assert len(test['per_class']) == 20 and test['num_examples'] == 2000
  # Stage 1 never saw a tail class, so it gets none right; "all" is the per-example mean.
  stage1 = saved['models']['stage1']['test']
  assert all(a == 0 for a in stage1['per_class'][10:])
  np.testing.assert_allclose(stage1['all'], np.mean(stage1['per_class']))
  assert len(saved['weight_norms']['stage2']) == 20
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {l['stage'] for l in lines} == {'stage1', 'stage2'}
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(os.path.join(workdir, 'tensorboard', 'stage2'))
  events.Reload()  # TensorBoard's own reader: the loss at every step metrics.jsonl logged for stage 2
  logged = [(l['step'], l['loss']) for l in lines if l['stage'] == 'stage2' and 'loss' in l]
  read = [(e.step, e.value) for e in events.Scalars('loss')]
  assert len(read) == len(logged) > 0
  np.testing.assert_allclose(read, logged, rtol=1e-6)


def test_stage2_from_another_runs_stage1(tiny_config, uninterrupted, tmp_path):
  reference_dir, reference = uninterrupted
  tiny_config.stages = 'stage2'
  tiny_config.stage1_checkpoint = reference_dir
  results = train_and_evaluate(tiny_config, str(tmp_path))
  assert results['models']['stage2'] == reference['models']['stage2']


def test_changed_config_is_refused_with_the_differing_fields(tiny_config, uninterrupted):
  workdir, _ = uninterrupted
  tiny_config.stage2.alpha = 0.5
  tiny_config.model.name = 'resnet20'
  with pytest.raises(ValueError, match=r"(?s)model.name: 'resnet8' -> 'resnet20'.*stage2.alpha: 0.1 -> 0.5"):
    train_and_evaluate(tiny_config, workdir)


def test_stage2_without_stage1_checkpoint_fails_early(tiny_config, tmp_path):
  tiny_config.stages = 'stage2'
  with pytest.raises(FileNotFoundError, match='stage 2 needs a stage1 checkpoint'):
    train_and_evaluate(tiny_config, str(tmp_path))


def test_stage1_checkpoint_of_other_data_is_refused(tiny_config, uninterrupted, tmp_path):
  reference_dir, _ = uninterrupted
  tiny_config.stages = 'stage2'
  tiny_config.stage1_checkpoint = reference_dir
  tiny_config.data.imbalance_factor = 5.0
  with pytest.raises(ValueError, match='trained on other data: data.imbalance_factor'):
    train_and_evaluate(tiny_config, str(tmp_path))


@pytest.mark.parametrize('field,value,message', [
    ('stage2.loss', 'focal', "stage2.loss must be one of .*, got 'focal'"),
    ('stage2.alpha', 1.5, 'stage2.alpha must be in'),
    ('stages', 'stage3', 'config.stages='),
    ('stage1.epochs', 0, 'stage1.epochs=0 keeps the starting model untrained'),
    ('stage1.epochs', -2, 'epochs must be a whole number >= 1'),
    ('model.name', 'vgg', "unknown model.name='vgg'"),
])
def test_bad_config_fails_before_training(tiny_config, tmp_path, field, value, message):
  section, _, name = field.rpartition('.')
  target = tiny_config[section] if section else tiny_config
  target[name] = value
  with pytest.raises(ValueError, match=message):
    train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_weight_decay_is_pytorch_sgd_decay_on_trained_params():
  from bwlm_jax.config import base_config
  stage = base_config().stage2
  stage.weight_decay = 0.1
  params = {'head': jnp.ones(3)}
  tx = optim.sgd(optax.constant_schedule(0.5), stage.weight_decay, stage.momentum, stage.nesterov)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new['head'], 1 - 0.5 * 0.1)  # p - lr * wd * p, PyTorch's SGD decay


def test_cosine_schedule_goes_from_lr_to_zero():
  from bwlm_jax.config import base_config
  stage = base_config().stage1
  schedule = optim.learning_rate_schedule(stage.learning_rate, total_steps=100, steps_per_epoch=10)
  np.testing.assert_allclose(schedule(0), 0.01)
  np.testing.assert_allclose(schedule(50), 0.005, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 0.0, atol=1e-9)
  reference = optax.cosine_decay_schedule(0.01, 100)
  steps = jnp.arange(0, 130, 7)
  np.testing.assert_array_equal(jax.vmap(schedule)(steps), jax.vmap(reference)(steps))
  # A traced length (one per stage-2 head) gives the same values, and 0 after its end.
  traced = jax.jit(lambda total, t: optim.learning_rate_schedule(stage.learning_rate, total, 10)(t))
  np.testing.assert_allclose(traced(jnp.int32(100), steps), jax.vmap(reference)(steps), rtol=1e-6, atol=1e-9)
  assert float(traced(jnp.int32(40), 41)) == 0.0


def test_class_balanced_sampling_draws_classes_uniformly():
  from bwlm_jax.data.sampling import class_balanced_indices, class_balanced_tables
  labels = np.array([0] * 90 + [1] * 9 + [3] * 1)  # class 2 has no example
  tables = class_balanced_tables(labels, 4)
  key = jax.random.key(0)
  drawn = np.concatenate([np.asarray(class_balanced_indices(key, step, tables, 64)) for step in range(50)])
  per_class = np.bincount(labels[drawn], minlength=4) / drawn.size
  np.testing.assert_allclose(per_class[[0, 1, 3]], 1 / 3, atol=0.03)
  assert per_class[2] == 0
  assert len(set(drawn[labels[drawn] == 1].tolist())) == 9  # every example of a class can be drawn


def test_max_norm_caps_each_class_vector():
  from bwlm_jax.train.steps import cap_class_norms
  kernel = jnp.array([[3.0, 0.1], [4.0, 0.0]])  # class norms 5 and 0.1
  capped = cap_class_norms({'dense': {'kernel': kernel, 'bias': jnp.zeros(2)}}, 1.0)['dense']['kernel']
  np.testing.assert_allclose(np.linalg.norm(capped, axis=0), [1.0, 0.1], rtol=1e-6)
  np.testing.assert_allclose(capped[:, 0], [0.6, 0.8], rtol=1e-6)


def test_crt_style_stage2_on_naive_backbone(tiny_config, tmp_path):
  tiny_config.stages = 'naive,stage2'
  tiny_config.naive.epochs = 1
  tiny_config.stage2.backbone = 'naive'
  tiny_config.stage2.train_set = 'long_tail'
  tiny_config.stage2.sampler = 'class_balanced'
  tiny_config.stage2.loss = 'ce'
  tiny_config.stage2.max_norm = 0.5
  results = train_and_evaluate(tiny_config, str(tmp_path))
  naive, _ = _restore(str(tmp_path), 'naive')
  stage2, meta = _restore(str(tmp_path), 'stage2')
  assert_trees_equal(stage2['frozen']['params'], naive['params']['backbone'])
  assert meta['total_steps'] == 2 * -(-311 // 32)  # the whole long tail, not the review set
  assert np.linalg.norm(stage2['params']['head']['dense']['kernel'], axis=0).max() <= 0.5 + 1e-5
  assert set(results['models']) == {'naive', 'stage2'}


def test_cached_features_give_the_same_head_as_the_full_forward(tiny_config, uninterrupted, tmp_path):
  reference_dir, _ = uninterrupted
  tiny_config.stages = 'stage2'
  tiny_config.stage1_checkpoint = reference_dir
  tiny_config.stage2.augment = False
  heads = {}
  for cache in (False, True):
    tiny_config.stage2.cache_features = cache
    workdir = str(tmp_path / f'cache_{cache}')
    train_and_evaluate(tiny_config, workdir)
    heads[cache] = _restore(workdir, 'stage2')[0]['params']['head']['dense']
  for name in ('kernel', 'bias'):
    np.testing.assert_allclose(heads[True][name], heads[False][name], rtol=1e-4, atol=1e-5)
  assert not np.array_equal(heads[True]['kernel'], _restore(reference_dir, 'stage2')[0]['params']['head']['dense'][
      'kernel'])  # augmentation off really changed the batches' content


@pytest.mark.parametrize('augment', [True, False])
def test_heads_trained_together_equal_heads_trained_alone(tiny_config, uninterrupted, tmp_path, augment):
  from bwlm_jax.head_setting import HeadSetting
  from bwlm_jax.run.training_run import train_rows_and_evaluate
  reference_dir, _ = uninterrupted
  tiny_config.stages = 'stage2'
  tiny_config.stage1_checkpoint = reference_dir
  tiny_config.stage2.augment = augment
  settings = [  # the third head's schedule ends after one of the run's two epochs
      {'loss': 'bfs', 'alpha': 0.3, 'beta': 0.999, 'gamma': 2.0, 'weight_decay': 0.1, 'learning_rate': 0.01,
       'epochs': 2, 'backbone': 'stage1'},
      {'loss': 'ce', 'alpha': 0.1, 'beta': 0.9999, 'gamma': 1.0, 'weight_decay': 0.0, 'learning_rate': 0.05,
       'epochs': 2, 'backbone': 'stage1'},
      {'loss': 'balanced_softmax', 'alpha': 0.1, 'beta': 0.9999, 'gamma': 1.0, 'weight_decay': 5e-3,
       'learning_rate': 0.1, 'epochs': 1, 'backbone': 'stage1'},
  ]
  together = train_rows_and_evaluate(tiny_config, str(tmp_path / 'together'),
                                     {k: [HeadSetting(**s)] for k, s in enumerate(settings)}, None)
  stacked = _restore(str(tmp_path / 'together'), 'stage2_grid')[0]['params']['head']['dense']
  for k, setting in enumerate(settings):
    assert together[k]['source']['head'] == k and together[k]['source']['checkpoint'] == 'stage2_grid'
    for field, value in setting.items():
      tiny_config.stage2[field] = value
    workdir = str(tmp_path / f'alone{k}')
    alone = train_and_evaluate(tiny_config, workdir)
    head = _restore(workdir, 'stage2')[0]['params']['head']['dense']
    np.testing.assert_allclose(stacked['kernel'][k], head['kernel'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stacked['bias'][k], head['bias'], rtol=1e-4, atol=1e-5)
    assert abs(together[k]['models']['stage2']['test']['all'] - alone['models']['stage2']['test']['all']) <= 0.002


def test_bfloat16_compute_keeps_float32_parameters(tiny_config, tmp_path):
  tiny_config.model.dtype = 'bfloat16'
  tiny_config.stages = 'stage1'
  tiny_config.stage1.epochs = 1
  if importlib.metadata.version('jaxlib').startswith(process_setup.BF16_BROKEN_CPU_JAXLIB):
    with pytest.raises(UsageError, match='model.dtype=bfloat16 on a CPU with jaxlib 0.1[12]'):
      train_and_evaluate(tiny_config, str(tmp_path))
    assert os.listdir(tmp_path) == []  # refused before anything was written
    return
  results = train_and_evaluate(tiny_config, str(tmp_path))
  state, _ = _restore(str(tmp_path), 'stage1')
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state['params'])} == {np.dtype('float32')}
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state['opt_state'])} <= {np.dtype('float32'),
                                                                                    np.dtype('int32')}
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert all(np.isfinite(l['loss']) for l in lines)
  assert 0 <= results['models']['stage1']['test']['all'] <= 1
  assert np.isfinite(results['models']['stage1']['test']['calibration']['nll'])


def test_non_finite_features_stop_the_evaluation(tiny_config):
  from bwlm_jax.runtime import distributed
  from bwlm_jax.data import load_dataset
  from bwlm_jax.features import SplitFeatures
  from bwlm_jax.models import build_model
  dataset = load_dataset(tiny_config.data)
  model = build_model(tiny_config.model, dataset.num_classes)
  backbone, stats = model.init_backbone(jax.random.key(0), dataset.train.images.shape[1:])
  # One channel of the last BatchNorm diverged: its feature overflows float32. (A NaN inside the backbone
  # would not do: XLA:CPU's fused ReLU turns NaN into 0.)
  last = backbone['BasicBlockA_2']['BatchNorm_1']
  last['bias'] = last['bias'].at[0].set(3e38)
  features = SplitFeatures(model, dataset, distributed.make_mesh(), tiny_config.eval_batch_size)
  with pytest.raises(RunError, match=r'non-finite features for 400 of 400 examples'):
    features({'backbone': backbone, 'batch_stats': stats}, dataset.val)


def test_config_fields_added_later_at_their_default_do_not_block_resume():
  from bwlm_jax.config import base_config
  from bwlm_jax.workdir import config_differences
  current = base_config().to_dict()
  saved = base_config().to_dict()
  del saved['stage2']['cache_features']  # a run made before the field existed
  assert config_differences(saved, current) == []
  current['stage2']['cache_features'] = False
  assert config_differences(saved, current) == ["stage2.cache_features: '<absent>' -> False"]


def test_streamed_imagenet_lt_trains_resumes_and_evaluates(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds
  from bwlm_jax.config import base_config
  from bwlm_jax.data import tfds_source
  monkeypatch.setattr(tfds_source, 'host_reachable', lambda host, timeout_s=5.0: True)
  config = base_config()
  config.data.name = 'imagenet_lt'
  config.data.image_size = 32
  config.data.pipeline = 'stream'
  config.model.name = 'resnet8'
  config.stages = 'naive'
  config.naive.epochs = 2
  config.batch_size = 8
  config.eval_batch_size = 16
  config.log_every_steps = 1
  with tfds.testing.mock_data(num_examples=40):
    with pytest.raises(Interrupted):
      train_and_evaluate(config, str(tmp_path / 'resumed'), stop_after_steps=7)  # mid second epoch
    resumed = train_and_evaluate(config, str(tmp_path / 'resumed'))
    straight = train_and_evaluate(config, str(tmp_path / 'straight'))
    # Stage 2 chosen on ImageNet-LT's own validation split, streamed: candidates train on cached features.
    config.stages, config.stage1_checkpoint = 'stage2', str(tmp_path / 'resumed')
    config.stage2.backbone, config.stage2.train_set = 'naive', 'long_tail'
    config.stage2.select, config.stage2.augment = 'val', False
    config.stage2.grid.learning_rate, config.stage2.grid.epochs = (0.01, 0.1), (1,)
    config.stage2.grid.weight_decay, config.stage2.grid.alpha = None, None
    selected = train_and_evaluate(config, str(tmp_path / 'selected'))
    # The same grid fed streamed, augmented batches through the frozen backbone every step.
    config.stage2.augment = True
    streamed = train_and_evaluate(config, str(tmp_path / 'streamed'))
  assert [c['setting']['learning_rate'] for c in streamed['stage2_selection']['candidates']] == [0.01, 0.1]
  grid, grid_meta = _restore(str(tmp_path / 'streamed'), 'stage2_grid_naive_long_tail')
  assert grid['params']['head']['dense']['kernel'].shape[0] == 2 and grid_meta['total_steps'] == 5
  assert not np.allclose(grid['params']['head']['dense']['kernel'],
                         _restore(str(tmp_path / 'selected'), 'stage2_grid_naive_long_tail')[0]['params']['head'][
                             'dense']['kernel'])  # augmented batches, not the cached features
  record = selected['stage2_selection']
  assert [c['setting']['learning_rate'] for c in record['candidates']] == [0.01, 0.1]
  assert all(c['val']['num_examples'] == 40 and c['test']['num_examples'] == 40 for c in record['candidates'])
  assert selected['models']['stage2']['val']['all'] == record['candidates'][record['chosen']]['val']['all']
  state, meta = _restore(str(tmp_path / 'resumed'), 'naive')
  assert meta['total_steps'] == 10 and meta['finished'] and meta['center_crop'] is True
  assert_trees_equal(state, _restore(str(tmp_path / 'straight'), 'naive')[0])
  test = resumed['models']['naive']['test']
  assert test['num_examples'] == 40 and len(test['per_class']) == 1000


def test_metrics_file_holds_each_step_once_after_a_resume(tiny_config, tmp_path):
  """Rows logged after the last checkpoint (a killed run) are dropped on resume, then logged again once."""
  import shutil
  tiny_config.stages = 'stage1'
  tiny_config.log_every_steps = 1
  with pytest.raises(Interrupted):
    train_and_evaluate(tiny_config, str(tmp_path), stop_after_steps=5)
  shutil.rmtree(tmp_path / 'checkpoints' / 'stage1' / '5')  # as if killed after logging step 5
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5]
  train_and_evaluate(tiny_config, str(tmp_path))
  _, meta = _restore(str(tmp_path), 'stage1')
  steps = [json.loads(l)['step'] for l in open(tmp_path / 'metrics.jsonl')]
  assert steps == list(range(1, meta['total_steps'] + 1))


def test_a_budget_spent_on_a_stages_last_step_starts_no_other_stage(tiny_config, uninterrupted, tmp_path):
  _, meta = _restore(uninterrupted[0], 'stage1')
  with pytest.raises(Interrupted, match='stage2: stopped after step 0'):
    train_and_evaluate(tiny_config, str(tmp_path), stop_after_steps=meta['total_steps'])
  assert _restore(str(tmp_path), 'stage1')[1]['finished']
  assert not os.path.exists(tmp_path / 'checkpoints' / 'stage2') or not os.listdir(tmp_path / 'checkpoints' / 'stage2')


def test_logged_metrics_are_means_over_the_interval():
  from bwlm_jax.train.interval_metrics import IntervalMetrics, NonFiniteWatch

  class Writer:
    rows = []

    def write_scalars(self, step, values):
      self.rows.append((step, values))

  class Progress:
    def set_postfix(self, **kwargs):
      pass

  writer = Writer()
  interval = IntervalMetrics(writer, steps_per_epoch=4, progress=Progress(), watch=NonFiniteWatch('stage1', ''),
                             total_steps=12)
  for loss in (1.0, 2.0, 6.0):
    interval.add({'loss': jnp.float32(loss), 'accuracy': jnp.asarray([0.0, 1.0])}, batch_size=8)
  interval.close_interval(3)
  assert writer.rows == []  # read one interval later, so the host never waits on the queued step
  interval.flush()
  [(step, values)] = writer.rows
  assert step == 3 and values['loss'] == pytest.approx(3.0) and values['epoch'] == 0.75
  assert (values['accuracy'], values['accuracy/head0'], values['accuracy/head1']) == (0.5, 0.0, 1.0)


def test_validate_config_runs_once_per_run(tiny_config, tmp_path, monkeypatch):
  from bwlm_jax import config as config_lib
  from bwlm_jax.run import training_run
  calls = []
  real = config_lib.validate_config
  monkeypatch.setattr(training_run, 'validate_config', lambda c: calls.append(1) or real(c))
  tiny_config.stages = 'stage1'
  tiny_config.stage1.epochs = 1
  train_and_evaluate(tiny_config, str(tmp_path))
  assert calls == [1]


def test_device_arrays_of_a_backbone_stage_do_not_depend_on_stage2_fields(tiny_config):
  from bwlm_jax.train.feeders import train_split_name
  assert {train_split_name('naive', train_set) for train_set in ('review', 'long_tail')} == {'train/naive'}
  assert train_split_name('stage2', 'long_tail') == 'train/stage2/long_tail'


def test_multi_process_runs_stop_where_the_preemption_service_says(tiny_config, tmp_path, monkeypatch):
  from bwlm_jax.checkpoints import StageCheckpoints as Store
  from bwlm_jax.train import loop
  monkeypatch.setattr(loop, 'multi_process', lambda: True)
  monkeypatch.setattr(Store, 'reached_preemption', lambda self, step: step == 3)
  tiny_config.stages = 'stage1'
  with pytest.raises(Interrupted, match='stage1: stopped after step 3 on SIGTERM'):
    train_and_evaluate(tiny_config, str(tmp_path))
  state, meta = _restore(str(tmp_path), 'stage1')
  assert meta['step'] == 3 and not meta['finished'] and int(state['step']) == 3
