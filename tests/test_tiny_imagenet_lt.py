"""Tiny-ImageNet-LT rebuilt from its source by launch/make_tiny_imagenet_lt.py: the construction, the file-list
hash docs/REPRODUCING.md states, and clear errors."""

import os
import re
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from bwlm_jax.data import tiny_imagenet_lt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INDEX = os.path.join(ROOT, '..', 'shared', 'data', 'tiny-imagenet-200-index.tar.gz')


def _make(src, out):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'make_tiny_imagenet_lt.py'), str(src), str(out)],
                        capture_output=True, text=True, timeout=600)


def _stated_hash():
  text = open(os.path.join(ROOT, 'docs', 'REPRODUCING.md')).read()
  [stated] = set(re.findall(r'sha256 of the sorted file list: `([0-9a-f]{64})`', text))
  return stated


def _listing(out):
  return [f'{tiny_imagenet_lt.NAME}/' + os.path.relpath(os.path.join(d, f), out).replace(os.sep, '/')
          for d, _, files in os.walk(out) for f in files]


@pytest.mark.skipif(not os.path.exists(INDEX), reason='the source index lies in ../shared/data (development only)')
def test_the_index_of_the_source_copy_rebuilds_the_stated_file_list(tmp_path):
  with tarfile.open(INDEX) as tar:
    tar.extractall(tmp_path / 'index', filter='data')
  src = tmp_path / 'tiny-imagenet-200'
  for line in open(tmp_path / 'index' / 'image_files.txt'):
    path = src / line.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
  os.replace(tmp_path / 'index' / 'wnids.txt', src / 'wnids.txt')
  os.replace(tmp_path / 'index' / 'val_annotations.txt', src / 'val' / 'val_annotations.txt')
  run = _make(src, tmp_path / 'out')
  assert run.returncode == 0, run.stderr
  assert 'train 20,887 images, val 4,040 images, test 10,100 images' in run.stdout
  assert f'sha256 of the sorted file list: {_stated_hash()}' in run.stdout
  assert tiny_imagenet_lt.list_sha256(_listing(tmp_path / 'out')) == _stated_hash()


def _official_like_zip(path, counts, tests_per_class=3):
  """A tiny-imagenet-200.zip of the official layout with `counts[i]` training images in class i."""
  wnids = [f'n{i:08d}' for i in range(len(counts))]
  lines = []
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('tiny-imagenet-200/wnids.txt', '\n'.join(wnids) + '\n')
    for wnid, count in zip(wnids, counts):
      for k in range(count):
        archive.writestr(f'tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG', f'{wnid} {k}')
      for k in range(tests_per_class):
        name = f'val_{len(lines)}.JPEG'
        archive.writestr(f'tiny-imagenet-200/val/images/{name}', name)
        lines.append(f'{name}\t{wnid}\t0\t0\t63\t63')
    archive.writestr('tiny-imagenet-200/val/val_annotations.txt', '\n'.join(lines) + '\n')
  return wnids


def test_a_generated_archive_follows_the_construction(tmp_path):
  wnids = _official_like_zip(tmp_path / 'tiny.zip', [500, 70, 30])
  run = _make(tmp_path / 'tiny.zip', tmp_path / 'out')
  assert run.returncode == 0, run.stderr
  out = tmp_path / 'out'
  train = {w: sorted(os.listdir(out / 'train' / w)) for w in wnids}
  val = {w: sorted(os.listdir(out / 'val' / w)) for w in wnids}
  assert [len(train[w]) for w in wnids] == [480, 48, 4]  # int(480 * 0.01 ** (i / 2))
  assert all(len(val[w]) == 20 and not set(val[w]) & set(train[w]) for w in wnids)
  assert [len(os.listdir(out / 'test' / w)) for w in wnids] == [3, 3, 3]
  # The first class's shuffle is the first draw of random.Random(0): its val images are fixed.
  names = sorted(f'{wnids[0]}_{k}.JPEG' for k in range(500))
  import random
  random.Random(0).shuffle(names)
  assert val[wnids[0]] == sorted(names[:20])
  assert open(out / 'train' / wnids[1] / train[wnids[1]][0]).read().startswith(wnids[1])  # the bytes are copied
  assert f'sha256 of the sorted file list: {tiny_imagenet_lt.list_sha256(_listing(out))}' in run.stdout


def test_bad_sources_and_a_used_output_are_one_line_errors(tmp_path):
  _official_like_zip(tmp_path / 'small.zip', [500, 70, 10])  # class 2 needs 20 val + 4 train images
  run = _make(tmp_path / 'small.zip', tmp_path / 'out')
  assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith('error: class n00000002 has 10')
  (tmp_path / 'used').mkdir()
  (tmp_path / 'used' / 'keep.txt').write_text('earlier work')
  run = _make(tmp_path / 'small.zip', tmp_path / 'used')
  assert run.returncode == 2 and 'is not an empty folder: nothing is overwritten' in run.stderr
  assert (tmp_path / 'used' / 'keep.txt').read_text() == 'earlier work'
  run = _make(tmp_path / 'nothing-here', tmp_path / 'out2')
  assert run.returncode == 2 and 'neither a folder nor a zip file' in run.stderr


def test_class_counts_follow_the_documented_profile():
  counts = np.asarray([tiny_imagenet_lt.class_count(i, 202) for i in range(202)])
  assert counts[0] == 480 and counts[-1] == 4 and counts.sum() == 20_887


def test_the_config_schedules_differ_only_where_they_say(tmp_path):
  from bwlm_jax.config import validate_config
  from helpers import load_config_file
  default, native, cpu, long = (load_config_file(f'configs/tiny_imagenet_lt.py:{tmp_path}{schedule}')
                                for schedule in ('', ',native', ',cpu', ',long'))
  assert default.to_dict() == native.to_dict()
  sides_and_epochs = [(c.data.image_size, c.naive.epochs, c.stage1.epochs) for c in (native, cpu, long)]
  assert sides_and_epochs == [(64, 48, 48), (32, 24, 24), (32, 72, 72)]
  for config in (native, cpu, long):
    validate_config(config)
  for config in (native, long):
    config.data.image_size = 32
    for stage in ('naive', 'stage1'):
      config[stage].epochs = 24
    assert config.to_dict() == cpu.to_dict()
  with pytest.raises(Exception, match=r"takes ROOT\[,native\|,cpu\|,long\|,full\], got schedule 'longer'"):
    load_config_file(f'configs/tiny_imagenet_lt.py:{tmp_path},longer')
