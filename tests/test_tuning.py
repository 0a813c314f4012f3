"""Light fine-tuning of the backbone stages (`naive.tune`, `stage1.tune`): which parameters each mode trains,
the rest bit for bit as it came, BatchNorm statistics kept outside `full`, resume equal to an uninterrupted
run, and a backbone stage's balanced loss."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from bwlm_jax import losses
from bwlm_jax.checkpoints import read_latest, stage_directory
from bwlm_jax.config import validate_config
from bwlm_jax.runtime.errors import Interrupted, UsageError
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.models import build_model
from bwlm_jax.run.training_run import make_context, train_and_evaluate
from bwlm_jax.stages import NAIVE
from bwlm_jax.train import optim
from bwlm_jax.train import trainable
from bwlm_jax.train.loop import _backbone_loss, stage_split
from bwlm_jax.train.state import initial_state
from helpers import assert_trees_equal, tiny_config


def _trained(mode, name, image_size=32):
  """{top-level backbone module: 'train' | 'frozen' | 'mixed'} under `mode`, and the head's labels."""
  model = build_model({'name': name, 'dtype': 'float32'}, 5)
  backbone, _ = jax.eval_shape(lambda k: model.init_backbone(k, (image_size, image_size, 3)), jax.random.key(0))
  head = jax.eval_shape(lambda k: model.init_head(k, model.feature_dim((image_size, image_size, 3))),
                        jax.random.key(0))
  labels = trainable.labels(mode, name, {'backbone': backbone, 'head': head})
  summary = {}
  for module, tree in labels['backbone'].items():
    values = set(jax.tree.leaves(tree))
    summary[module] = values.pop() if len(values) == 1 else 'mixed'
  return summary, set(jax.tree.leaves(labels['head']))


def test_each_mode_trains_its_parameters():
  last, head = _trained('last', 'resnet18')
  assert head == {'train'}
  assert sorted(m for m, v in last.items() if v == 'train') == ['BasicBlock_6', 'BasicBlock_7']  # layer4
  assert _trained('last', 'resnet8')[0] == {'BasicBlockA_0': 'frozen', 'BasicBlockA_1': 'frozen',
                                            'BasicBlockA_2': 'train', 'BatchNorm_0': 'frozen', 'Conv_0': 'frozen'}
  vit, _ = _trained('last', 'vit_tiny_patch16')
  assert sorted(m for m, v in vit.items() if v == 'train') == ['blocks_10', 'blocks_11', 'blocks_9', 'norm']
  lite, _ = _trained('last', 'efficientnet_lite0')
  # Lite0's last two stages (4 blocks of 192 channels, 1 of 320) and its head convolution.
  assert sorted(m for m, v in lite.items() if v == 'train') == [f'_blocks_{i}' for i in range(11, 16)] + [
      '_bn1', '_conv_head']
  bias = trainable.labels('bias', 'vit_tiny_patch16', {'backbone': jax.eval_shape(
      lambda k: build_model({'name': 'vit_tiny_patch16', 'dtype': 'float32'}, 5).init_backbone(k, (32, 32, 3)),
      jax.random.key(0))[0], 'head': {}})
  flat = traverse_util.flatten_dict(bias['backbone'])
  trained = sorted('.'.join(p) for p, v in flat.items() if v == 'train')
  assert trained[:3] == ['blocks_0.attn.proj.bias', 'blocks_0.attn.qkv.bias', 'blocks_0.mlp.fc1.bias']
  assert {p[-1] for p, v in flat.items() if v == 'train'} == {'bias', 'scale'}
  assert all(v == 'frozen' for p, v in flat.items() if p[-1] in ('kernel', 'pos_embed', 'cls_token'))
  assert set(_trained('head', 'resnet18')[0].values()) == {'frozen'}
  assert set(_trained('full', 'resnet18')[0].values()) == {'train'}


def test_a_tuned_stage_leaves_the_rest_bit_for_bit_and_resumes_equal_to_an_uninterrupted_run(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, epochs=2)
  config.stages, config.naive.tune, config.checkpoint_every_steps = 'naive', 'last', 4
  ctx = make_context(config, str(tmp_path / 'reference'))
  start = initial_state(ctx, NAIVE, optim.sgd(lambda step: 0.1, 0.0, 0.9, False))
  start_params, start_stats = jax.device_get(start.params), jax.device_get(start.batch_stats)
  reference = train_and_evaluate(config, str(tmp_path / 'reference'))
  state, _ = read_latest(stage_directory(str(tmp_path / 'reference'), 'naive'))
  labels = traverse_util.flatten_dict(trainable.labels('last', 'resnet8', start_params))
  before, after = traverse_util.flatten_dict(start_params), traverse_util.flatten_dict(state['params'])
  moved = {path: not np.array_equal(before[path], after[path]) for path in before}
  assert all(moved[path] for path, label in labels.items() if label == 'train')
  assert not any(moved[path] for path, label in labels.items() if label == 'frozen')
  assert sum(label == 'frozen' for label in labels.values()) > 0
  assert_trees_equal(state['batch_stats'], start_stats)  # BatchNorm in inference mode, everywhere
  with pytest.raises(Interrupted, match='naive: stopped after step 5'):
    train_and_evaluate(config, str(tmp_path / 'resumed'), stop_after_steps=5)
  results = train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert_trees_equal(read_latest(stage_directory(str(tmp_path / 'resumed'), 'naive'))[0], state)
  assert results['models'] == reference['models']


def test_a_backbone_stage_takes_a_balanced_loss_over_its_own_counts(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  ctx = make_context(config, str(tmp_path))
  split = stage_split(config, ctx.dataset, NAIVE)
  counts = np.bincount(split.labels, minlength=ctx.dataset.num_classes)
  logits = jax.random.normal(jax.random.key(0), (6, ctx.dataset.num_classes))
  labels = np.array([0, 1, 2, 3, 19, 5])
  expected = losses.balanced_softmax(logits, labels, np.asarray(counts, np.float32))
  np.testing.assert_allclose(_backbone_loss(ctx, 'balanced_softmax', split)(logits, labels), expected, rtol=1e-6)
  bfs = losses.head_loss('bfs', logits, labels, np.asarray(counts, np.float32), HeadSetting())
  np.testing.assert_allclose(_backbone_loss(ctx, 'bfs', split)(logits, labels), bfs, rtol=1e-6)
  assert _backbone_loss(ctx, 'ce', split) is losses.cross_entropy


def test_an_unknown_mode_or_loss_is_one_error(tfds_dir):
  config = tiny_config(tfds_dir)
  config.stage1.tune = 'lora2'
  with pytest.raises(UsageError, match=r"stage1.tune must be one of \('full', .*, 'adapter'\), got 'lora2'"):
    validate_config(config)
  config.stage1.tune, config.naive.loss = 'full', 'focal'
  with pytest.raises(UsageError, match=r"naive.loss must be one of \('ce', 'cb_focal', 'balanced_softmax', 'bfs'\)"):
    validate_config(config)


def _vit(lora_rank=0, adapter_dim=0):
  return build_model({'name': 'vit_tiny_patch16', 'dtype': 'float32', 'lora_rank': lora_rank,
                      'adapter_dim': adapter_dim}, 3)


def test_lora_and_adapters_start_as_the_pretrained_network_exactly():
  base, tuned = _vit(), _vit(lora_rank=4, adapter_dim=8)
  params, _ = base.init_backbone(jax.random.key(0), (32, 32, 3))
  added, _ = tuned.init_backbone(jax.random.key(1), (32, 32, 3))
  flat = traverse_util.flatten_dict(added)
  assert {p[-2] for p in flat if len(p) > 1 and p[-2].endswith('_lora')} == {'qkv_lora', 'proj_lora'}
  assert flat[('blocks_0', 'attn', 'qkv_lora', 'b')].shape == (4, 576) and ('blocks_11', 'adapter', 'up', 'kernel') in flat
  both = traverse_util.flatten_dict(params)
  combined = traverse_util.unflatten_dict({p: both.get(p, v) for p, v in flat.items()})
  images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  np.testing.assert_array_equal(tuned.features(combined, {}, images, False)[0], base.features(params, {}, images, False)[0])


def test_lora_tunes_only_its_matrices_and_the_export_folds_them_in(tmp_path):
  from bwlm_jax import weights
  from bwlm_jax.checkpoints import load_finished
  from test_pretrained import _config, _folder
  from test_vit import _vit_weights
  _folder(tmp_path / 'data', [12, 6, 3])
  start = _vit_weights(tmp_path / 'weights.safetensors', 'vit_tiny_patch16')
  config = _config(tmp_path / 'data', tmp_path / 'weights.safetensors')
  config.model.name, config.model.lora_rank, config.stages = 'vit_tiny_patch16', 4, 'naive'
  config.naive.tune, config.naive.epochs, config.naive.learning_rate = 'lora', 2, 0.5
  train_and_evaluate(config, str(tmp_path / 'run'))
  variables, meta = load_finished(str(tmp_path / 'run'), 'naive')
  after = traverse_util.flatten_dict(jax.device_get(variables['backbone']))
  before = traverse_util.flatten_dict(start['params'])
  assert all(np.array_equal(after[p], v) for p, v in before.items())  # the pretrained network, bit for bit
  assert all(np.any(after[p] != 0) for p in after if len(p) > 1 and p[-1] == 'b' and p[-2].endswith('_lora'))  # LoRA moved
  sidecar = weights.export_model(variables, 'vit_tiny_patch16', meta, str(tmp_path / 'out.safetensors'))
  assert sidecar['pytorch'].startswith("timm.create_model('vit_tiny_patch16_224'")
  plain = _vit()
  folded = weights.pretrained_backbone(str(tmp_path / 'out.safetensors'), plain, (32, 32, 3), 'vit_tiny_patch16')
  images = jax.random.uniform(jax.random.key(3), (4, 32, 32, 3))
  tuned = build_model(meta['config']['model'], 3)
  np.testing.assert_allclose(plain.features(folded['params'], {}, images, False)[0],
                             tuned.features(variables['backbone'], {}, images, False)[0], rtol=1e-4, atol=1e-5)
  adapters = _vit(adapter_dim=8).init_backbone(jax.random.key(0), (32, 32, 3))[0]
  with pytest.raises(UsageError, match=r'this model has AdaptFormer adapters, which no timm or open_clip class '
                                       r'holds'):
    weights.merged_lora(adapters)


def test_lora_or_adapters_where_they_cannot_go_are_one_error(tfds_dir):
  config = tiny_config(tfds_dir)
  config.naive.tune = 'lora'
  with pytest.raises(UsageError, match=r"naive.tune='lora' tunes a ViT's attention or MLPs; resnet8 has none"):
    validate_config(config)
  config.naive.tune, config.model.adapter_dim = 'full', 16
  with pytest.raises(UsageError, match=r"model.adapter_dim adds adapters to the ViTs' attention and MLPs; resnet8"):
    validate_config(config)
  config.model.name, config.model.adapter_dim, config.data.image_size = 'vit_tiny_patch16', 0, 32
  config.stage1.tune = 'adapter'
  with pytest.raises(UsageError, match=r"stage1.tune='adapter' trains what model.adapter_dim adds, which is 0: "
                                       r'set --config.model.adapter_dim=64'):
    validate_config(config)


def test_tuning_rows_are_chosen_on_validation_and_a_rerun_trains_nothing(tmp_path, capsys):
  import json
  import os
  from bwlm_jax import selection
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.tune import Tune, default_grid
  from test_pretrained import _config, _folder, _generated_weights
  _folder(tmp_path / 'data', [12, 6, 3])
  _generated_weights(tmp_path / 'r18.safetensors')
  config = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
  grid = default_grid()
  grid.modes, grid.losses, grid.head_inits = ('bias',), ('balanced_softmax',), ('stage2_head',)
  grid.learning_rate, grid.epochs = (0.3, 0.001), (1,)
  rows = run_study(Tune(grid), config, str(tmp_path / 'run'))
  assert [row.name for row in rows] == ['BWLM (frozen)', 'CE linear probe (frozen)', 'cRT (frozen)',
                                        'bias + balanced_softmax (LP-FT)', 'best on validation']
  scores = {}
  tuned_dir = tmp_path / 'run' / 'tuning' / 'bias-balanced_softmax-stage2_head'
  for setting in ('lr0.3_epochs1', 'lr0.001_epochs1'):
    results = json.load(open(tuned_dir / setting / 'results.json'))
    scores[setting] = selection.score(results['models']['naive']['val'], 'balanced_accuracy')
  bwlm = rows[0].source  # LP-FT starts from the head validation chose for the frozen BWLM row
  assert json.load(open(tuned_dir / 'lr0.3_epochs1' / 'config.json'))['naive']['head_from'] == (
      f'{stage_directory(bwlm["workdir"], bwlm["checkpoint"])}:{bwlm["head"]}')
  tuned = rows[3]
  assert tuned.score == max(scores.values())  # chosen by validation alone
  assert tuned.setting == ('lr=0.3 epochs=1' if scores['lr0.3_epochs1'] >= scores['lr0.001_epochs1']
                           else 'lr=0.001 epochs=1')
  assert rows[-1].setting == max(rows[:-1], key=lambda row: row.score).name
  assert os.path.exists(tmp_path / 'run' / 'tuning' / 'table.md')
  capsys.readouterr()
  grid.learning_rate = (0.001, 0.3)  # a grid in another order reuses every finished run
  again = run_study(Tune(grid), config, str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert out.count('naive: finished earlier') == 2 and out.count('stage2_grid_pretrained: finished earlier') == 1
  assert out.count('stage2_grid_pretrained_long_tail: finished earlier') == 1  # cRT's heads, on the whole tail
  crt = json.load(open(tmp_path / 'run' / 'tuning' / 'cRT_frozen' / 'config.json'))['stage2']
  assert (crt['train_set'], crt['sampler'], crt['loss']) == ('long_tail', 'class_balanced', 'ce')  # cRT's own
  assert [(row.name, row.setting, row.test['all']) for row in again] == [(r.name, r.setting, r.test['all'])
                                                                         for r in rows] or (
      scores['lr0.3_epochs1'] == scores['lr0.001_epochs1'])  # a tie keeps the earlier candidate
  # predict.py --stage=best reads the tuning study's choice (not only an ablation's).
  from bwlm_jax.predict import best_model, predict_files
  best = json.load(open(tmp_path / 'run' / 'tuning' / 'best.json'))
  assert best['method'] == rows[-1].setting and best_model(str(tmp_path / 'run'))['method'] == again[-1].setting
  image = str(tmp_path / 'data' / 'test' / 'c0' / '0.png')
  predicted, unreadable = predict_files(str(tmp_path / 'run'), 'best', [image], 2)
  assert not unreadable and [path for path, _ in predicted] == [image] and len(predicted[0][1]) == 2
  assert predict_files(str(tmp_path / 'run'), 'best:tuning', [image], 2)[0] == predicted


def test_tuning_without_weights_or_with_an_empty_grid_is_one_error(tmp_path):
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.tune import Tune, default_grid
  from test_pretrained import _config
  config = _config(tmp_path, tmp_path / 'r18.safetensors')
  config.model.init_from = None
  config.stage2.backbone = 'stage1'
  with pytest.raises(UsageError, match=r'tuning compares ways of fine-tuning pretrained weights: set '
                                       r'--config.model.init_from'):
    run_study(Tune(), config, str(tmp_path / 'run'))
  grid = default_grid()
  config.model.init_from, grid.losses = str(tmp_path / 'r18.safetensors'), ()
  with pytest.raises(UsageError, match=r'tuning.losses is empty'):
    run_study(Tune(grid), config, str(tmp_path / 'run'))
  grid.losses, grid.modes = ('ce',), ('lora',)
  with pytest.raises(UsageError, match=r"naive.tune='lora' tunes a ViT's attention or MLPs; resnet18 has none"):
    run_study(Tune(grid), config, str(tmp_path / 'run'))


def test_the_head_can_start_from_the_class_means_of_the_starting_backbone(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.naive.head_init = 'class_means'
  ctx = make_context(config, str(tmp_path))
  split = stage_split(config, ctx.dataset, NAIVE)
  state = initial_state(ctx, NAIVE, optim.sgd(lambda step: 0.1, 0.0, 0.9, False), split=split)
  features, labels = ctx.split_features({'backbone': state.params['backbone'], 'batch_stats': state.batch_stats},
                                        split)
  for c in (0, 7, 19):
    mean = features[labels == c].mean(axis=0)
    np.testing.assert_allclose(state.params['head']['dense']['kernel'][:, c], mean / np.linalg.norm(mean),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state.params['head']['dense']['bias'], 0.0)
  config.naive.head_init = 'mean'
  with pytest.raises(UsageError, match=r"naive.head_init must be one of \('random', 'class_means', 'stage2_head', "
                                      r"'text'\), got 'mean'"):
    validate_config(config)


def test_a_stage_of_0_epochs_is_its_starting_model(tfds_dir, tmp_path):
  # The nearest-class-mean classifier (and so zero-shot CLIP with head_init='text') as a model of its own: a finished
  # checkpoint at step 0 holding the start, evaluated like any other.
  from bwlm_jax.checkpoints import load_finished
  config = tiny_config(tfds_dir)
  config.stages, config.naive.epochs, config.naive.head_init = 'naive', 0, 'class_means'
  train_and_evaluate(config, str(tmp_path / 'run'))
  variables, meta = load_finished(str(tmp_path / 'run'), 'naive')
  assert meta['step'] == 0 and meta['finished']
  ctx = make_context(config, str(tmp_path / 'fresh'))
  split = stage_split(config, ctx.dataset, NAIVE)
  start = initial_state(ctx, NAIVE, optim.sgd(lambda step: 0.1, 0.0, 0.9, False), split=split)
  assert_trees_equal({'backbone': start.params['backbone'], 'head': start.params['head']},
                     {'backbone': variables['backbone'], 'head': variables['head']})
  with open(tmp_path / 'run' / 'results.json') as file:
    assert 'naive' in json.load(file)['models']
  config.naive.head_init = 'random'
  with pytest.raises(UsageError, match=r'naive.epochs=0 keeps the starting model untrained, which with '
                                       r'head_init=random is a random head'):
    validate_config(config)


def test_lp_ft_starts_from_the_stage2_head_chosen_on_the_frozen_backbone(tmp_path):
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.runtime.errors import MissingFileError
  from bwlm_jax.run.training_run import check_inputs
  from test_pretrained import _config, _folder, _generated_weights
  _folder(tmp_path / 'data', [12, 6, 3])
  _generated_weights(tmp_path / 'r18.safetensors')
  frozen = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')  # BWLM's grid on the frozen backbone
  train_and_evaluate(frozen, str(tmp_path / 'bwlm'))
  chosen, _ = load_finished(str(tmp_path / 'bwlm'), 'stage2')
  grid = read_latest(stage_directory(str(tmp_path / 'bwlm'), 'stage2_grid_pretrained'))[0]['params']['head']
  config = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
  config.stages, config.naive.tune, config.naive.head_init = 'naive', 'last', 'stage2_head'
  tx = optim.sgd(lambda step: 0.1, 0.0, 0.9, False)
  for head_from, expected in ((str(tmp_path / 'bwlm'), chosen['head']),
                              (f'{stage_directory(str(tmp_path / "bwlm"), "stage2_grid_pretrained")}:1',
                               jax.tree.map(lambda leaf: leaf[1], grid))):
    config.naive.head_from = head_from
    check_inputs(config, str(tmp_path / 'lp'))
    state = initial_state(make_context(config, str(tmp_path / 'lp')), NAIVE, tx)
    assert_trees_equal(state.params['head'], expected)
  config.naive.head_from = f'{stage_directory(str(tmp_path / "bwlm"), "stage2_grid_pretrained")}:2'
  with pytest.raises(UsageError, match=r'holds 2 head\(s\); give one as DIRECTORY:K with K below that'):
    initial_state(make_context(config, str(tmp_path / 'lp')), NAIVE, tx)
  config.naive.head_from = str(tmp_path / 'bwlm')
  cases = ((('model', 'init_from', str(tmp_path / 'other.safetensors')), UsageError,
            r'not trained on the frozen features of this run\'s backbone'),
           (('data', 'max_count', 6), UsageError, r'trained on other data: data.max_count is None there, 6 here'),
           (('naive', 'head_from', str(tmp_path / 'nowhere')), MissingFileError,
            r'naive.head_from=.*nowhere.*: no finished stage-2 checkpoint at'),
           (('naive', 'head_from', ''), UsageError, r"naive.head_init='stage2_head' reads its head from naive.head_from"))
  for (section, field, value), error, message in cases:
    changed = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
    changed.stages, changed.naive.head_init, changed.naive.head_from = 'naive', 'stage2_head', str(tmp_path / 'bwlm')
    if field == 'init_from':
      _generated_weights(value)
    changed[section][field] = value
    with pytest.raises(error, match=message):
      check_inputs(changed, str(tmp_path / 'lp'))
  assert not (tmp_path / 'lp').exists()


def test_every_head_start_has_a_row_name():
  from bwlm_jax.config import HEAD_INITS
  from bwlm_jax.studies.tune import HEAD_START_NAMES
  assert set(HEAD_START_NAMES) == set(HEAD_INITS)
