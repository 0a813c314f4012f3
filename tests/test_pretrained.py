"""Pretrained weights in (torchvision/timm layout), models out: the same network as PyTorch's, clear errors
for weights that do not fit, BWLM on a frozen pretrained backbone, and an export that reads back identically."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from bwlm_jax import weights
from bwlm_jax.config import base_config
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.models import LinearHead, Model, build_model, torch_layout
from bwlm_jax.models.resnet_imagenet import ImageNetResNet
from bwlm_jax.run.training_run import train_and_evaluate
from helpers import random_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'data', 'torch_resnets.npz')  # made by make_torch_resnet_fixture.py
# name: (stage sizes, bottleneck, groups, width per group), as the fixture script builds them.
FIXTURE_NETWORKS = {'basic': ((1, 2, 1, 1), False, 1, 64), 'grouped': ((1, 1, 2, 1), True, 4, 32)}


def _fixture_state(data, name):
  prefix = f'{name}/state/'
  return {key[len(prefix):]: data[key] for key in data.files if key.startswith(prefix)}


@pytest.mark.parametrize('name', FIXTURE_NETWORKS)
def test_features_and_logits_equal_pytorchs_for_the_same_weights(name):
  data = np.load(FIXTURE)
  stage_sizes, bottleneck, groups, width_per_group = FIXTURE_NETWORKS[name]
  model = Model(ImageNetResNet(stage_sizes, bottleneck, groups, width_per_group, base_channels=4), LinearHead(5))
  params, stats = model.init_backbone(jax.random.key(0), (32, 32, 3))
  state = _fixture_state(data, name)
  template = {'params': params, 'batch_stats': stats}
  layout = torch_layout.resnet_layout(template, stage_sizes, bottleneck)
  variables = torch_layout.from_torch(state, template, layout, 'fixture')
  features, _ = model.features(variables['params'], variables['batch_stats'], data['images'], train=False)
  np.testing.assert_allclose(features, data[f'{name}/features'], rtol=1e-4, atol=1e-5)
  head = {'dense': {'kernel': state['fc.weight'].T, 'bias': state['fc.bias']}}
  np.testing.assert_allclose(model.logits(head, features), data[f'{name}/logits'], rtol=1e-4, atol=1e-5)
  back = torch_layout.to_torch(variables, head, layout)  # and the way out: the same state dict
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def _generated_weights(path, name='resnet18', num_classes=1000, drop=(), extra=None):
  """A torchvision-layout weights file of `name` with random values (what a downloaded one looks like)."""
  model = build_model({'name': name, 'dtype': 'float32'}, num_classes)
  backbone = random_backbone(model)
  head = model.init_head(jax.random.key(2), model.feature_dim((32, 32, 3)))
  stage_sizes, bottleneck = {'resnet18': ((2, 2, 2, 2), False), 'resnet34': ((3, 4, 6, 3), False)}[name]
  state = torch_layout.to_torch(backbone, head, torch_layout.resnet_layout(backbone, stage_sizes, bottleneck))
  state = {k: v for k, v in state.items() if k not in drop}
  save_file({**state, **(extra or {})}, str(path))
  return backbone


def test_a_weights_file_loads_without_its_classifier(tmp_path):
  expected = _generated_weights(tmp_path / 'r18.safetensors')
  model = build_model({'name': 'resnet18', 'dtype': 'float32'}, 7)
  loaded = weights.pretrained_backbone(str(tmp_path / 'r18.safetensors'), model, (32, 32, 3), 'resnet18')
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)
  np.savez(tmp_path / 'r18.npz', **load_file(str(tmp_path / 'r18.safetensors')))  # .npz reads the same
  again = weights.pretrained_backbone(str(tmp_path / 'r18.npz'), model, (32, 32, 3), 'resnet18')
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(expected)))


def test_weights_that_do_not_fit_are_one_error_listing_every_problem(tmp_path):
  _generated_weights(tmp_path / 'r18.safetensors', drop=('layer1.0.bn1.running_var',),
                     extra={'layer9.0.conv1.weight': np.zeros((1, 1, 1, 1), np.float32)})
  model = build_model({'name': 'resnet18', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r'missing: layer1.0.bn1.running_var; unknown: layer9.0.conv1.weight'):
    weights.pretrained_backbone(str(tmp_path / 'r18.safetensors'), model, (32, 32, 3), 'resnet18')
  _generated_weights(tmp_path / 'r34.safetensors', name='resnet34')  # another architecture
  with pytest.raises(UsageError, match=r'unknown: layer1.2.bn1.bias, .* Check model.name'):
    weights.pretrained_backbone(str(tmp_path / 'r34.safetensors'), model, (32, 32, 3), 'resnet18')
  wide = build_model({'name': 'resnet50', 'dtype': 'float32'}, 7)
  with pytest.raises(UsageError, match=r'shape mismatch: layer1.0.conv1.weight \(64, 64, 3, 3\) \(expected '
                                       r'\(64, 64, 1, 1\)\)'):
    weights.pretrained_backbone(str(tmp_path / 'r34.safetensors'), wide, (32, 32, 3), 'resnet50')
  data = open(tmp_path / 'r18.safetensors', 'rb').read()
  with open(tmp_path / 'cut.safetensors', 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UsageError, match=r'cut.safetensors cannot be read as weights .* truncated'):
    weights.pretrained_backbone(str(tmp_path / 'cut.safetensors'), model, (32, 32, 3), 'resnet18')


@pytest.mark.skipif(__import__('importlib').util.find_spec('torch') is not None, reason='torch is installed')
def test_a_pth_file_without_torch_says_how_to_convert(tmp_path):
  (tmp_path / 'w.pth').write_bytes(b'not read')
  with pytest.raises(UsageError, match=r'needs PyTorch, which is not installed; convert the file once'):
    weights.read_state_dict(str(tmp_path / 'w.pth'))


def _folder(root, counts, size=40):
  rng = np.random.default_rng(0)
  for split, per_class in (('train', counts), ('val', [4] * len(counts)), ('test', [4] * len(counts))):
    for c, count in enumerate(per_class):
      os.makedirs(root / split / f'c{c}', exist_ok=True)
      for i in range(count):
        pixels = np.clip(rng.normal(60 + 40 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / split / f'c{c}' / f'{i}.png')


def _config(root, init_from):
  config = base_config()
  config.data.name, config.data.folder, config.data.image_size = 'folder', str(root), 32
  config.model.name, config.model.init_from = 'resnet18', str(init_from)
  config.batch_size, config.eval_batch_size = 8, 16
  config.stages = 'stage2'
  config.stage2.backbone = 'pretrained'
  config.stage2.epochs = 2
  config.stage2.grid.learning_rate, config.stage2.grid.epochs = (0.01, 0.1), (2,)
  config.stage2.grid.weight_decay, config.stage2.grid.alpha = None, None
  return config


def test_bwlm_on_a_frozen_pretrained_backbone_and_the_export_reads_back(tmp_path, capsys):
  _folder(tmp_path / 'data', [24, 12, 6, 3])
  expected = _generated_weights(tmp_path / 'r18.safetensors')
  results = train_and_evaluate(_config(tmp_path / 'data', tmp_path / 'r18.safetensors'), str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert 'stage 2: 2 candidate settings' in out
  record = results['stage2_selection']
  assert [c['setting']['backbone'] for c in record['candidates']] == ['pretrained', 'pretrained']
  from bwlm_jax.checkpoints import load_finished
  variables, meta = load_finished(str(tmp_path / 'run'), 'stage2')
  for a, b in zip(jax.tree.leaves(variables['backbone']), jax.tree.leaves(expected['params']), strict=True):
    np.testing.assert_array_equal(a, b)  # frozen as it came
  assert meta['mean'] == list(weights.IMAGENET_MEAN) and meta['std'] == list(weights.IMAGENET_STD)
  # evaluate.py reads the model with the normalisation it was trained with: the same test accuracy.
  from bwlm_jax.data import load_dataset
  from bwlm_jax.evaluation.workdir_reports import report_workdir
  config = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
  summary = report_workdir(config, str(tmp_path / 'run'), load_dataset(config.data), ['stage2'])
  assert summary['stage2']['splits']['test']['report']['all'] == results['models']['stage2']['test']['all']
  # Out through the launch script, then in again: the same logits.
  export = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'export.py'), f'--workdir={tmp_path / "run"}',
                           '--stage=stage2', f'--output={tmp_path / "bwlm.safetensors"}'], capture_output=True,
                          text=True, timeout=300)
  assert export.returncode == 0, export.stderr
  sidecar = json.load(open(tmp_path / 'bwlm.safetensors.json'))
  assert sidecar['pytorch'] == 'torchvision.models.resnet18(num_classes=4)' and sidecar['class_names'] == [
      'c0', 'c1', 'c2', 'c3']
  state = load_file(str(tmp_path / 'bwlm.safetensors'))
  assert state['fc.weight'].shape == (4, 512) and int(state['bn1.num_batches_tracked']) == 0
  model = build_model({'name': 'resnet18', 'dtype': 'float32'}, 4)
  back = weights.pretrained_backbone(str(tmp_path / 'bwlm.safetensors'), model, (32, 32, 3), 'resnet18')
  images = np.random.default_rng(1).random((3, 32, 32, 3), np.float32)
  original, _ = model.features(variables['backbone'], variables['batch_stats'], images, train=False)
  imported, _ = model.features(back['params'], back['batch_stats'], images, train=False)
  head = {'dense': {'kernel': state['fc.weight'].T, 'bias': state['fc.bias']}}
  np.testing.assert_array_equal(model.logits(head, imported), model.logits(variables['head'], original))
  again = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'export.py'), f'--workdir={tmp_path / "run"}',
                          f'--output={tmp_path / "bwlm.safetensors"}'], capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and again.stderr.strip().endswith('exists: nothing is overwritten, choose another '
                                                                  '--output.')
  # An export is written whole or not at all: its sidecar blocked, nothing of it stays; the rerun then writes both.
  from bwlm_jax.runtime.errors import WriteError
  second = tmp_path / 'second.safetensors'
  (tmp_path / 'second.safetensors.json.tmp').mkdir()  # the sidecar's atomic write cannot open its file
  with pytest.raises(WriteError, match=r'second.safetensors.json failed'):
    weights.export_model(variables, 'resnet18', meta, str(second))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('second')) == ['second.safetensors.json.tmp']
  (tmp_path / 'second.safetensors.json.tmp').rmdir()
  weights.export_model(variables, 'resnet18', meta, str(second))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('second')) == [
      'second.safetensors', 'second.safetensors.json']
  assert json.load(open(tmp_path / 'second.safetensors.json')) == sidecar
  for key, value in load_file(str(second)).items():
    np.testing.assert_array_equal(value, state[key])
  (tmp_path / 'third.safetensors.json').write_text('{}')  # a sidecar in the way is never overwritten
  with pytest.raises(UsageError, match=r'third.safetensors.json exists: nothing is overwritten, choose another '
                                       r'--output \(an export is the .safetensors and its .json sidecar\)'):
    weights.export_model(variables, 'resnet18', meta, str(tmp_path / 'third.safetensors'))
  assert not (tmp_path / 'third.safetensors').exists()


def _naive_from(tmp_path, weights_file):
  """launch/train.py's naive ResNet-18 on TMP/data from `weights_file`, in a workdir that holds earlier work."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'keep.txt').write_text('earlier work')
  return workdir, subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'train.py'), f'--config={ROOT}/configs/image_folder.py:'
       f'{tmp_path / "data"}', f'--workdir={workdir}', '--config.model.name=resnet18',
       f'--config.model.init_from={weights_file}', '--config.stages=naive'], capture_output=True, text=True,
      timeout=300)


def test_a_bad_weights_file_is_one_line_before_training_and_nothing_is_lost(tmp_path):
  _folder(tmp_path / 'data', [6, 3])
  (tmp_path / 'bad.safetensors').write_bytes(b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}')
  workdir, result = _naive_from(tmp_path, tmp_path / 'bad.safetensors')
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'bad.safetensors cannot be read as weights' in lines[0]
  assert sorted(os.listdir(workdir)) == ['keep.txt']
  missing = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'train.py'), f'--config={ROOT}/configs/image_folder.py:'
       f'{tmp_path / "data"}', f'--workdir={workdir}', '--config.stage2.backbone=pretrained'],
      capture_output=True, text=True, timeout=300)
  assert missing.returncode == 2 and 'which is not set: give --config.model.init_from' in missing.stderr


def test_naive_fine_tunes_from_the_pretrained_backbone(tmp_path):
  from bwlm_jax.run.training_run import make_context
  from bwlm_jax.stages import NAIVE
  from bwlm_jax.train import optim
  from bwlm_jax.train.state import initial_state
  _folder(tmp_path / 'data', [6, 3])
  expected = _generated_weights(tmp_path / 'r18.safetensors')
  config = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
  ctx = make_context(config, str(tmp_path / 'run'))
  state = initial_state(ctx, NAIVE, optim.sgd(lambda step: 0.1, config.naive.weight_decay, config.naive.momentum, config.naive.nesterov))
  for a, b in zip(jax.tree.leaves(state.params['backbone']), jax.tree.leaves(expected['params']), strict=True):
    np.testing.assert_array_equal(a, b)
  assert state.params['head']['dense']['kernel'].shape == (512, 2)  # a new head for the dataset's classes


def test_the_ablation_compares_heads_on_the_pretrained_backbone_too(tmp_path):
  from bwlm_jax.studies.ablation import ablation_variants
  config = _config(tmp_path, tmp_path / 'w.safetensors')
  assert 'BWLM (pretrained backbone)' not in ablation_variants(base_config())
  variants = ablation_variants(config)
  assert variants['BWLM (pretrained backbone)']['backbone'] == 'pretrained'
  assert {**variants['cRT'], 'backbone': 'pretrained'} == variants['cRT (pretrained backbone)']


def test_a_weights_file_with_a_nan_or_an_inf_is_one_line_naming_the_tensor_before_training(tmp_path):
  _folder(tmp_path / 'data', [6, 3])
  _generated_weights(tmp_path / 'good.safetensors')
  state = load_file(str(tmp_path / 'good.safetensors'))
  state['layer2.0.bn1.running_var'] = state['layer2.0.bn1.running_var'].copy()
  state['layer2.0.bn1.running_var'][3] = np.inf  # one garbage channel: it trained to exit 0 before
  save_file(state, str(tmp_path / 'inf.safetensors'))
  workdir, result = _naive_from(tmp_path, tmp_path / 'inf.safetensors')
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines == [f'error: {tmp_path / "inf.safetensors"}: tensor layer2.0.bn1.running_var holds 1 non-finite '
                   'value(s) (NaN or Inf): the weights are damaged or come from a diverged run, and would train a '
                   'model on garbage features.']
  assert sorted(os.listdir(workdir)) == ['keep.txt']  # nothing trained or written
  kernel = state['conv1.weight'].copy()
  kernel[0, 0, 0, :2] = np.nan
  save_file({**load_file(str(tmp_path / 'good.safetensors')), 'conv1.weight': kernel}, str(tmp_path / 'nan.safetensors'))
  with pytest.raises(UsageError, match=r'nan.safetensors: tensor conv1.weight holds 2 non-finite value'):
    weights.read_state_dict(str(tmp_path / 'nan.safetensors'))
  assert len(weights.read_state_dict(str(tmp_path / 'good.safetensors'))) == len(state)
