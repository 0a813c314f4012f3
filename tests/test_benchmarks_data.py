"""The standard long-tail benchmarks beyond ImageNet-LT: iNaturalist 2018 (tfds, mocked) and Places-LT
(published list files, here small generated ones), with their bad-input paths."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from bwlm_jax.data import DatasetNotPreparedError, load_dataset, tfds_source
from bwlm_jax.data import list_source
from bwlm_jax.runtime.errors import MissingFileError, UsageError
from helpers import load_config_file


def test_inaturalist_streams_its_validation_split_as_the_test_split(monkeypatch):
  monkeypatch.setattr(tfds_source, 'host_reachable', lambda host, timeout_s=5.0: True)
  config = load_config_file('configs/inaturalist2018.py')
  assert (config.model.name, config.data.image_size) == ('resnet50', 224)
  config.data.image_size = 32
  read = []
  real = tfds_source.stream_split
  monkeypatch.setattr(tfds_source, 'stream_split', lambda builder, split, *a: read.append(split) or
                      real(builder, split, *a))
  with tfds.testing.mock_data(num_examples=30):
    dataset = load_dataset(config.data)
  assert read == ['train', 'validation'] and dataset.val is None  # the unlabelled test split is never read
  assert dataset.num_classes == 8142 and not dataset.in_memory and len(dataset.test) == 30
  assert dataset.mean == (0.485, 0.456, 0.406)


def test_inaturalist_keeps_its_own_tail_and_says_how_to_get_it_offline(tmp_path, monkeypatch):
  config = load_config_file('configs/inaturalist2018.py')
  config.data.imbalance_factor = 100.0
  with pytest.raises(UsageError, match='i_naturalist2018 has its own long tail'):
    load_dataset(config.data)
  config.data.imbalance_factor, config.data.data_dir = None, str(tmp_path)
  monkeypatch.setattr(tfds_source, 'host_reachable', lambda host, timeout_s=5.0: False)
  with pytest.raises(DatasetNotPreparedError, match='ml-inat-competition-datasets.s3.amazonaws.com cannot be '
                                                    'reached.*tfds build i_naturalist2018'):
    load_dataset(config.data)


def _write_lists(root, counts_by_split, names=('abbey', 'beach', 'canyon')):
  """Small Places-LT-like lists: train images under data_256/<letter>/<class>/, val/test under val_256/."""
  for split, counts in counts_by_split.items():
    lines = []
    for label, count in enumerate(counts):
      for i in range(count):
        name = names[label]
        relative = (f'data_256/{name[0]}/{name}/{i:08d}.jpg' if split == 'train'
                    else f'val_256/Places365_{split}_{label}_{i:04d}.jpg')
        os.makedirs(os.path.dirname(root / relative), exist_ok=True)
        Image.fromarray(np.full((40, 48, 3), 40 * label, np.uint8)).save(root / relative)
        lines.append(f'/{relative} {label}')
    (root / f'Places_LT_{split}.txt').write_text('\n'.join(lines) + '\n')


def test_places_lt_lists_load_with_class_names_from_the_paths(tmp_path, monkeypatch):
  for name in ('Places_LT_train.txt', 'Places_LT_val.txt', 'Places_LT_test.txt'):  # small lists, not published
    monkeypatch.delitem(list_source.PUBLISHED, name)
  _write_lists(tmp_path, {'train': [6, 3, 1], 'val': [2, 2, 2], 'test': [4, 4, 4]})
  config = load_config_file(f'configs/places_lt.py:{tmp_path}')
  config.data.image_size = 32
  dataset = load_dataset(config.data)
  assert dataset.class_names == ('abbey', 'beach', 'canyon')
  assert dataset.train_counts.tolist() == [6, 3, 1] and len(dataset.val) == 6 and len(dataset.test) == 12
  assert not dataset.in_memory and dataset.val_source == 'split'


def test_places_lt_lists_are_checked_against_the_published_counts(tmp_path):
  _write_lists(tmp_path, {'train': [6, 3, 1], 'val': [2, 2, 2], 'test': [4, 4, 4]})
  config = load_config_file(f'configs/places_lt.py:{tmp_path}')
  with pytest.raises(UsageError, match=r'Places_LT_train.txt is not the published list: images 10 \(published '
                                       r'62,500\), classes 3 \(published 365\), max 6 \(published 4,980\), min 1 '
                                       r'\(published 5\)'):
    load_dataset(config.data)


def test_places_lt_missing_lists_and_bad_lines_are_named(tmp_path):
  config = load_config_file(f'configs/places_lt.py:{tmp_path}')
  with pytest.raises(MissingFileError, match=r"list file '.*Places_LT_train.txt' does not exist\. Places-LT: the "
                                             r'list files .* OLTR'):
    load_dataset(config.data)
  (tmp_path / 'Places_LT_train.txt').write_text('data_256/a/abbey/1.jpg 0\ndata_256/b/beach/2.jpg\n')
  with pytest.raises(UsageError, match=r'Places_LT_train.txt:2: expected "<relative image path> <label >= 0>"'):
    load_dataset(config.data)
  config = load_config_file('configs/places_lt.py')
  with pytest.raises(UsageError, match='data.name="lists" needs data.folder=ROOT'):
    load_dataset(config.data)


def test_places_lt_protocol_runs_from_a_resnet152_weights_file(tmp_path, monkeypatch, capsys):
  """The README's Places-LT command on mock lists: ImageNet ResNet-152 weights (generated, as no download is
  possible here) in torchvision's layout, BWLM's grid of heads on the frozen pretrained backbone."""
  import jax
  from safetensors.numpy import save_file
  from bwlm_jax.models import build_model, family_of, torch_layout
  from bwlm_jax.run.training_run import train_and_evaluate
  for name in ('Places_LT_train.txt', 'Places_LT_val.txt', 'Places_LT_test.txt'):
    monkeypatch.delitem(list_source.PUBLISHED, name)
  _write_lists(tmp_path, {'train': [6, 3, 1], 'val': [2, 2, 2], 'test': [4, 4, 4]})
  model = build_model({'name': 'resnet152', 'dtype': 'float32'}, 1000)
  shapes = jax.eval_shape(lambda key: model.init_backbone(key, (32, 32, 3)), jax.random.key(0))
  rng = np.random.default_rng(0)
  params, stats = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), shapes)
  stats = jax.tree_util.tree_map_with_path(lambda path, v: np.abs(v) + 1 if path[-1].key == 'var' else v, stats)
  backbone = {'params': params, 'batch_stats': stats}
  save_file(torch_layout.to_torch(backbone, None, family_of('resnet152').layout('resnet152', backbone)),
            str(tmp_path / 'resnet152.safetensors'))
  config = load_config_file(f'configs/places_lt.py:{tmp_path},{tmp_path / "resnet152.safetensors"}')
  assert (config.model.name, config.batch_size, config.naive.epochs) == ('resnet152', 128, 30)
  config.data.image_size, config.batch_size, config.eval_batch_size = 32, 4, 4
  config.stages, config.stage2.epochs = 'stage2', 1
  config.stage2.grid.learning_rate, config.stage2.grid.epochs = (0.1,), (1,)
  config.stage2.grid.weight_decay, config.stage2.grid.alpha = None, (0.1, 0.9)
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  out = capsys.readouterr().out
  assert 'no finished stage1 or naive backbone here, so the grid leaves out its 4 candidates' in out
  record = results['stage2_selection']
  assert [c['setting']['backbone'] for c in record['candidates']] == ['pretrained', 'pretrained']
  assert results['models']['stage2']['test']['num_examples'] == 12


def test_the_gpu_check_runs_on_a_cpu_and_writes_every_part(tmp_path):
  import json
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'gpu_check.jsonl'
  done = subprocess.run([os.path.join(root, 'benchmarks', 'gpu_check.sh'), '--cpu', str(out)], cwd=root,
                        capture_output=True, text=True, timeout=900, env={**os.environ, 'PYTHON': sys.executable})
  assert done.returncode == 0, done.stderr[-3000:]
  records = [json.loads(line) for line in open(out)]
  assert not [r for r in records if 'error' in r], [r for r in records if 'error' in r]
  parts = {r['part'] for r in records}
  assert parts >= {'device', 'stage2', 'cifar100_lt_estimate', 'quickstart', 'jax_steps', 'pytorch_steps', 'done'}
  device = next(r for r in records if r['part'] == 'device')
  assert device['backend'] == 'cpu' and device['versions']['jax']
  measured = {(r['part'], r.get('measurement'), r.get('model')) for r in records}
  assert {('stage2', 'stage1_train', 'resnet8'), ('stage2', 'stage2_sweep_4_heads_cached', 'resnet8'),
          ('jax_steps', 'stage1_train', 'resnet10')} <= measured
  estimate = next(r for r in records if r['part'] == 'cifar100_lt_estimate')
  # CIFAR-100-LT at IF 100: 10,847 training images, Data Balanced Review's stage-1 and stage-2 sets.
  assert (estimate['train_images'], estimate['stage1_images'], estimate['naive_epochs']) == (10847, 9901, 320)
  stage1 = next(r for r in records if (r['part'], r.get('measurement')) == ('stage2', 'stage1_train'))
  per_image = stage1['step_s'] / stage1['batch']
  assert estimate['backbones_s'] == pytest.approx(per_image * (10847 * 320 + 9901 * 310), rel=1e-3)
  quickstart = next(r for r in records if r['part'] == 'quickstart' and 'wall_s' in r)
  assert 0 <= quickstart['stage2_test']['all'] <= 1
