"""Dataset sources: tfds (mocked CIFAR-100 and ImageNet-LT), the embedded builder, image folders, bad input."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from bwlm_jax.config import base_config
from bwlm_jax.data import (DatasetNotPreparedError, long_tail_counts, load_dataset, shot_groups, stage_indices,
                           stage_train_split, stream_pipeline, tfds_source)
from bwlm_jax.data.synthetic import shapes


def _data_config(**fields):
  cfg = base_config().data
  for key, value in fields.items():
    setattr(cfg, key, value)
  return cfg


@pytest.fixture
def reachable(monkeypatch):
  """Pretend the download host answers; inside mock_data the download itself is a no-op."""
  monkeypatch.setattr(tfds_source, 'host_reachable', lambda host, timeout_s=5.0: True)


def test_cifar100_long_tail_under_mock_data(reachable, tmp_path):
  cfg = _data_config(name='cifar100', imbalance_factor=5.0, max_count=10, data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=3000):
    dataset = load_dataset(cfg)
    again = load_dataset(cfg)
  expected = long_tail_counts(100, 10, 5.0)
  np.testing.assert_array_equal(dataset.train_counts, expected)
  assert dataset.train.images.shape == (expected.sum(), 32, 32, 3)
  assert dataset.mean == (0.5071, 0.4865, 0.4409)
  np.testing.assert_array_equal(dataset.train.images, again.train.images)  # same seed, same subset
  reseeded = _data_config(name='cifar100', imbalance_factor=5.0, max_count=10, data_dir=str(tmp_path),
                          subset_seed=1)
  with tfds.testing.mock_data(num_examples=3000):
    other = load_dataset(reseeded)
  assert not np.array_equal(dataset.train.images, other.train.images)


def test_imagenet_lt_streams_under_mock_data(reachable):
  cfg = _data_config(name='imagenet_lt', image_size=48)
  with tfds.testing.mock_data(num_examples=40):
    dataset = load_dataset(cfg)
    assert not dataset.in_memory and dataset.num_classes == 1000
    stage1 = stage_train_split(dataset, 'stage1', seed=0)
    with pytest.raises(ValueError, match='stage2 training set of imagenet_lt is empty'):
      stage_train_split(dataset, 'stage2', seed=0)  # mock labels leave most classes without images
    batches = list(stream_pipeline.train_batches(
        stage1, global_batch=4, image_size=48, mean=dataset.mean, std=dataset.std, seed=0, epoch=0,
        start_step=0, steps=3))
    resumed = list(stream_pipeline.train_batches(
        stage1, global_batch=4, image_size=48, mean=dataset.mean, std=dataset.std, seed=0, epoch=0,
        start_step=1, steps=3))
    evals = list(stream_pipeline.eval_batches(dataset.test, batch_size=16, image_size=48,
                                              mean=dataset.mean, std=dataset.std))
  assert [b[0].shape for b in batches] == [(4, 48, 48, 3)] * 3
  assert set(np.concatenate([b[1] for b in batches])) <= set(stage1.labels.tolist())
  for full, part in zip(batches[1:], resumed):  # a resumed epoch sees the same batches
    np.testing.assert_array_equal(full[0], part[0])
    np.testing.assert_array_equal(full[1], part[1])
  assert sum(int(mask.sum()) for _, _, mask in evals) == len(dataset.test) == 40
  assert [b[0].shape[0] for b in evals] == [16, 16, 8] and evals[-1][2].all()  # 8 left: padded to 8, not 16


def test_stream_shards_split_the_data_between_processes(reachable):
  with tfds.testing.mock_data(num_examples=24):
    dataset = load_dataset(_data_config(name='imagenet_lt', image_size=32))
    kwargs = dict(batch_size=4, image_size=32, mean=dataset.mean, std=dataset.std, process_count=2)
    shard_sizes = [sum(int(m.sum()) for _, _, m in stream_pipeline.eval_batches(dataset.test, process_index=p,
                                                                                   **kwargs))
                   for p in (0, 1)]
    with pytest.raises(ValueError, match='not divisible by the 2 processes'):
      next(stream_pipeline.train_batches(dataset.train, global_batch=5, image_size=32, mean=dataset.mean,
                                         std=dataset.std, seed=0, epoch=0, start_step=0, steps=1,
                                         process_count=2))
  assert shard_sizes == [12, 12]
  with tfds.testing.mock_data(num_examples=9):  # shards of 5 and 4: both yield 2 batches of 4
    dataset = load_dataset(_data_config(name='imagenet_lt', image_size=32))
    kwargs = dict(batch_size=4, image_size=32, mean=dataset.mean, std=dataset.std, process_count=2)
    shards = [list(stream_pipeline.eval_batches(dataset.test, process_index=p, **kwargs)) for p in (0, 1)]
  assert [len(s) for s in shards] == [2, 2]
  assert [sum(int(m.sum()) for _, _, m in s) for s in shards] == [5, 4]


def test_embedded_dataset_is_long_tailed_and_deterministic(embedded_data_config):
  dataset = load_dataset(embedded_data_config)
  counts = dataset.train_counts
  np.testing.assert_array_equal(counts, long_tail_counts(20, 300, 50.0))
  assert sorted(set(shot_groups(counts))) == ['few', 'many', 'medium']
  assert len(dataset.test) == 2000
  np.testing.assert_array_equal(np.bincount(dataset.test.labels), np.full(20, 100))
  assert dataset.class_names[:3] == ('red_disc', 'green_square', 'blue_triangle')
  # The head half shows every shape and colour; the tail holds new combinations of them.
  head = [name.split('_') for name in dataset.class_names[:10]]
  assert {s for _, s in head} == set(shapes.SHAPES) and {c for c, _ in head} == set(shapes.DEFAULT_COLOURS)
  assert len(set(dataset.class_names)) == 20
  images, labels = shapes.draw_split([3] * 20, seed=7)
  images2, labels2 = shapes.draw_split([3] * 20, seed=7)
  np.testing.assert_array_equal(images, images2)
  np.testing.assert_array_equal(labels, labels2)


def test_channel_statistics_counted_per_value_equal_the_float_formula(embedded_data_config):
  from bwlm_jax.data.load import _channel_stats
  from bwlm_jax.data.splits import ArraySplit
  dataset = load_dataset(embedded_data_config)  # of the whole balanced train split, as every older run has them
  assert (dataset.mean, dataset.std) == ((0.2787, 0.2839, 0.2585), (0.2222, 0.2156, 0.2096))
  black_and_white = np.zeros((2, 4, 4, 3), np.uint8)
  black_and_white[1] = 255  # by hand: mean 1/2, std 1/2 in every channel
  assert _channel_stats(ArraySplit(black_and_white, np.zeros(2, np.int64))) == ((0.5,) * 3, (0.5,) * 3)
  images = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3)).astype(np.uint8)
  pixels = images.reshape(-1, 3) / 255.0
  counted = _channel_stats(ArraySplit(images, np.zeros(50, np.int64)))
  np.testing.assert_allclose(counted, (pixels.mean(0), pixels.std(0)), atol=5e-5 + 1e-12)  # 4 decimals
  floats = _channel_stats(ArraySplit(images / 1.0, np.zeros(50, np.int64)))  # not uint8: the float formula
  np.testing.assert_allclose(floats, (pixels.mean(0), pixels.std(0)), atol=5e-5 + 1e-12)


def test_drawn_splits_are_cached_and_a_damaged_off_or_unwritable_cache_draws_again(tmp_path, monkeypatch):
  from bwlm_jax.data.synthetic import embedded
  monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / 'cache'))
  path = embedded.cache_path('test')
  images, labels = embedded.drawn('test')  # drawn, then written
  assert os.listdir(tmp_path / 'cache') == [os.path.basename(path)]  # no temporary file left behind
  assert images.shape == (2000, 32, 32, 3) and np.bincount(labels).tolist() == [100] * 20
  draws = []
  draw = shapes.draw_split
  monkeypatch.setattr(shapes, 'draw_split', lambda *args: draws.append(args) or draw(*args))

  def same_split():
    again = embedded.drawn('test')
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)

  same_split()
  assert not draws  # read from the cache
  with open(path, 'r+b') as f:
    f.truncate(1000)  # cut short
  same_split()
  assert len(draws) == 1
  same_split()
  assert len(draws) == 1  # the damaged file was replaced by a whole one
  with open(path, 'wb') as f:
    np.savez(f, images=images[:5], labels=labels[:5])  # readable, not this split
  same_split()
  assert len(draws) == 2
  monkeypatch.setattr(np, '__version__', '0.0')  # another NumPy may draw other values: another file
  assert embedded.cache_path('test') != path
  monkeypatch.undo()
  monkeypatch.setattr(shapes, 'draw_split', lambda *args: draws.append(args) or draw(*args))
  monkeypatch.setenv(embedded.CACHE_ENV, 'off')
  assert embedded.cache_path('test') is None
  same_split()
  assert len(draws) == 3
  (tmp_path / 'a-file').write_text('')
  monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / 'a-file' / 'cache'))  # cannot be made
  same_split()
  assert len(draws) == 4 and sorted(os.listdir(tmp_path)) == ['a-file', 'cache']


def test_embedded_classes_differ_in_colour_and_shape(embedded_data_config):
  test = load_dataset(embedded_data_config).test
  images = test.images.astype(np.float64) / 255.0
  # Colour signal: the brightest channel of a red class is red, of a blue class blue.
  saturation = images.max(-1) - images.min(-1)
  def dominant(label):
    member = images[test.labels == label]
    vivid = saturation[test.labels == label] > 0.5
    return np.argmax(member[vivid].mean(0))
  assert dominant(0) == 0 and dominant(2) == 2  # red_disc, blue_triangle
  # Shape signal: discs fill more of their centre than rings of the same colour.
  centre = saturation[:, 12:20, 12:20].mean((1, 2))
  assert centre[test.labels == 0].mean() > centre[test.labels == 8].mean()  # red_disc vs red_ring


def _write_folder(root, split, class_counts, size=(20, 14), fmt='png'):
  rng = np.random.default_rng(0)
  for name, count in class_counts.items():
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(count):
      pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / split / name / f'{i}.{fmt}')


def test_image_folder_natural_and_long_tailed(tmp_path, capsys):
  _write_folder(tmp_path, 'train', {'cat': 12, 'dog': 12, 'eel': 12})
  _write_folder(tmp_path, 'test', {'cat': 2, 'dog': 2, 'eel': 2}, fmt='jpg')
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  natural = load_dataset(_data_config(name='folder', folder=str(tmp_path), image_size=16))
  assert natural.class_names == ('cat', 'dog', 'eel')
  assert natural.train.images.shape == (36, 16, 16, 3)
  assert 'left out 1 non-image files' in capsys.readouterr().out
  tailed = load_dataset(_data_config(name='folder', folder=str(tmp_path), image_size=16,
                                     imbalance_factor=4.0, val_per_class=5))
  np.testing.assert_array_equal(tailed.train_counts, [12, 6, 3])
  # Validation from the unused images: cat keeps all 12, dog has 6 left, eel 9.
  np.testing.assert_array_equal(np.bincount(tailed.val.labels, minlength=3), [0, 5, 5])
  with pytest.raises(ValueError, match='at most 9 training images per class are left out'):
    load_dataset(_data_config(name='folder', folder=str(tmp_path), image_size=16, imbalance_factor=4.0))
  streamed = load_dataset(_data_config(name='folder', folder=str(tmp_path), image_size=16, pipeline='stream'))
  batch = next(stream_pipeline.eval_batches(streamed.test, batch_size=4, image_size=16, mean=streamed.mean,
                                            std=streamed.std))
  assert batch[0].shape == (4, 16, 16, 3)


def test_stage_sets_are_the_review_sets(embedded_data_config):
  dataset = load_dataset(embedded_data_config)
  labels = dataset.train.labels
  stage1 = np.bincount(labels[stage_indices(labels, 20, 'stage1', 0)], minlength=20)
  stage2 = np.bincount(labels[stage_indices(labels, 20, 'stage2', 0)], minlength=20)
  counts = dataset.train_counts
  np.testing.assert_array_equal(stage1[:10], counts[:10])
  assert stage1[10:].sum() == 0
  np.testing.assert_array_equal(stage2, np.minimum(counts, counts[10]))
  np.testing.assert_array_equal(stage_indices(labels, 20, 'stage2', 0), stage_indices(labels, 20, 'stage2', 0))
  assert len(stage_train_split(dataset, 'naive', 0)) == len(dataset.train)


# ---- bad input: one clear error each, before any training ----

def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="unknown dataset data.name='cifar1000'"):
    load_dataset(_data_config(name='cifar1000'))


def test_imbalance_factor_below_one():
  with pytest.raises(ValueError, match='imbalance_factor must be >= 1'):
    load_dataset(_data_config(name='cifar100', imbalance_factor=0.5))


def test_missing_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    load_dataset(_data_config(name='folder', folder=str(tmp_path / 'nowhere')))


def test_folder_with_empty_class(tmp_path):
  _write_folder(tmp_path, 'train', {'cat': 3, 'dog': 0})
  with pytest.raises(ValueError, match="dog' has no image files"):
    load_dataset(_data_config(name='folder', folder=str(tmp_path)))


def test_folder_with_unreadable_image(tmp_path):
  _write_folder(tmp_path, 'train', {'cat': 3, 'dog': 3})
  _write_folder(tmp_path, 'test', {'cat': 1, 'dog': 1})
  (tmp_path / 'train' / 'dog' / 'broken.jpg').write_bytes(b'not a jpeg')
  for pipeline in ('device', 'stream'):
    with pytest.raises(ValueError, match='cannot read image .*broken.jpg'):
      load_dataset(_data_config(name='folder', folder=str(tmp_path), pipeline=pipeline))


def test_folder_test_classes_missing_from_train(tmp_path):
  _write_folder(tmp_path, 'train', {'cat': 3})
  _write_folder(tmp_path, 'test', {'cat': 1, 'owl': 1})
  with pytest.raises(ValueError, match=r"classes that the train split lacks: \['owl'\]"):
    load_dataset(_data_config(name='folder', folder=str(tmp_path)))


def test_classes_without_training_images_are_classes_of_the_model(tmp_path, capsys):
  # data.unseen_classes: the union of every split's class folders, in sorted order; the unseen class has count 0,
  # its test images keep their label, and the summary says how many such classes there are.
  from bwlm_jax.data.summary import count_summary, format_summary
  _write_folder(tmp_path, 'train', {'cat': 3, 'dog': 2})
  _write_folder(tmp_path, 'val', {'bee': 1, 'dog': 1})
  _write_folder(tmp_path, 'test', {'cat': 1, 'owl': 2})
  with pytest.raises(ValueError, match=r"\['owl'\]; --config.data.unseen_classes=True"):
    load_dataset(_data_config(name='folder', folder=str(tmp_path)))
  dataset = load_dataset(_data_config(name='folder', folder=str(tmp_path), unseen_classes=True))
  assert dataset.class_names == ('bee', 'cat', 'dog', 'owl')
  assert dataset.train_counts.tolist() == [0, 3, 2, 0]
  assert sorted(dataset.test.labels.tolist()) == [1, 3, 3] and sorted(dataset.val.labels.tolist()) == [0, 2]
  summary = count_summary(dataset.train_counts)
  assert summary['unseen_classes'] == 2 and summary['classes_per_group']['few'] == 4
  assert 'classes without a training image (unseen; counted as few too): 2' in format_summary('f', summary)
  with pytest.raises(ValueError, match=r"imbalance_factor .* 2 classes have no training image .*\['bee', 'owl'\]"):
    load_dataset(_data_config(name='folder', folder=str(tmp_path), unseen_classes=True, imbalance_factor=2.0))


def test_tfds_test_classes_missing_from_train(tmp_path, reachable):
  # Mocked CIFAR-10 at IF 1e6 with max_count 1: the profile keeps 0 images of the last classes.
  cfg = _data_config(name='cifar10', imbalance_factor=1e6, max_count=1, data_dir=str(tmp_path), download=True)
  with tfds.testing.mock_data(num_examples=200):
    with pytest.raises(ValueError, match='classes that the train split lacks'):
      load_dataset(cfg)


def test_not_prepared_and_download_disabled(tmp_path):
  with pytest.raises(DatasetNotPreparedError, match='not prepared .* data.download is False.*tfds build cifar100'):
    load_dataset(_data_config(name='cifar100', imbalance_factor=100.0, data_dir=str(tmp_path), download=False))


def test_not_prepared_and_no_network(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, 'host_reachable', lambda host, timeout_s=5.0: False)
  with pytest.raises(DatasetNotPreparedError, match='cannot be reached'):
    load_dataset(_data_config(name='cifar100', imbalance_factor=100.0, data_dir=str(tmp_path)))


def test_imagenet_lt_not_prepared_points_to_manual_dir(tmp_path):
  with pytest.raises(DatasetNotPreparedError, match='manual directory'):
    load_dataset(_data_config(name='imagenet_lt', data_dir=str(tmp_path), download=False))


def test_natural_tail_rejects_an_imbalance_factor(tmp_path):
  with pytest.raises(ValueError, match='imagenet_lt has its own long tail'):
    load_dataset(_data_config(name='imagenet_lt', imbalance_factor=10.0, data_dir=str(tmp_path)))


def test_streamed_labels_are_cached_next_to_the_prepared_files(tfds_dir, tmp_path, monkeypatch):
  import shutil
  data_dir = str(tmp_path / 'tfds')
  shutil.copytree(tfds_dir, data_dir)  # the cache is written next to the files; keep the shared copy clean
  builder = tfds.builder('bwlm_shapes', data_dir=data_dir)
  first = tfds_source.stream_split(builder, 'test')
  expected = tfds_source.read_arrays(builder, 'test').labels
  np.testing.assert_array_equal(first.labels, expected)
  caches = [name for name in os.listdir(builder.data_dir) if name.startswith('bwlm-labels-test-')]
  assert len(caches) == 1

  def no_reading(*args, **kwargs):
    raise AssertionError('labels read again instead of from the cache')

  monkeypatch.setattr(builder, 'as_dataset', no_reading)
  np.testing.assert_array_equal(tfds_source.stream_split(builder, 'test').labels, expected)
  monkeypatch.undo()
  # Files prepared again (new times) invalidate the cache: the labels are read afresh under a new key.
  for name in os.listdir(builder.data_dir):
    if name.startswith('bwlm_shapes-test.'):
      os.utime(os.path.join(builder.data_dir, name), ns=(1, 1))
  np.testing.assert_array_equal(tfds_source.stream_split(builder, 'test').labels, expected)
  assert len([name for name in os.listdir(builder.data_dir) if name.startswith('bwlm-labels-test-')]) == 2
