"""On-device batching and augmentation: coverage, determinism, shapes and value ranges."""

import jax
import jax.numpy as jnp
import numpy as np

from bwlm_jax.data import ArraySplit, device_pipeline


def test_epoch_covers_every_example_and_wraps_the_last_batch():
  key = jax.random.key(0)
  n, batch = 10, 4
  steps = device_pipeline.steps_per_epoch(n, batch)
  assert steps == 3
  seen = np.concatenate([device_pipeline.batch_indices(key, 2, s, n, batch) for s in range(steps)])
  assert sorted(seen[:n].tolist()) == list(range(n))  # one full permutation first
  np.testing.assert_array_equal(seen[n:], seen[:2])  # then wraps to the epoch's start
  again = np.concatenate([device_pipeline.batch_indices(key, 2, s, n, batch) for s in range(steps)])
  np.testing.assert_array_equal(seen, again)
  next_epoch = np.concatenate([device_pipeline.batch_indices(key, 3, s, n, batch) for s in range(steps)])
  assert not np.array_equal(seen, next_epoch)


def test_random_crop_flip_shapes_values_and_determinism():
  images = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.int32).reshape(2, 8, 8, 3).astype(jnp.uint8) + 1
  out = device_pipeline.random_crop_flip(jax.random.key(1), images, padding=2)
  assert out.shape == images.shape and out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, device_pipeline.random_crop_flip(jax.random.key(1), images, padding=2))
  # Every output pixel is a padded zero or a pixel of the same image.
  for i in range(2):
    values = set(np.asarray(out[i]).ravel().tolist())
    assert values <= set(np.asarray(images[i]).ravel().tolist()) | {0}
  outs = [device_pipeline.random_crop_flip(jax.random.key(k), images, padding=2) for k in range(20)]
  assert any(not np.array_equal(o, images) for o in outs)


def test_zero_padding_crop_is_identity_or_mirror():
  images = jax.random.randint(jax.random.key(0), (16, 5, 5, 3), 1, 255).astype(jnp.uint8)
  out = device_pipeline.random_crop_flip(jax.random.key(2), images, padding=0)
  for original, view in zip(np.asarray(images), np.asarray(out)):
    assert np.array_equal(view, original) or np.array_equal(view, original[:, ::-1])
  flipped = sum(not np.array_equal(v, o) for o, v in zip(np.asarray(images), np.asarray(out)))
  assert 0 < flipped < 16


def test_normalize_matches_formula():
  pixels = jnp.array([[[[0, 255, 51]]]], jnp.uint8)
  out = device_pipeline.normalize(pixels, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
  np.testing.assert_allclose(np.asarray(out).ravel(), [-1.0, 2.0, 0.0], atol=1e-6)


def test_eval_batches_pad_and_mask_the_last_batch():
  split = ArraySplit(np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3), np.arange(7))
  batches = list(device_pipeline.eval_batches(split, 3))
  assert len(batches) == 3
  assert [int(m.sum()) for _, _, m in batches] == [3, 3, 1]
  labels = np.concatenate([l[m] for _, l, m in batches])
  np.testing.assert_array_equal(labels, np.arange(7))
  assert batches[-1][0].shape == (1, 2, 2, 3)  # the last batch holds 1 example: padded to 1, not to 3


def test_a_last_batch_is_padded_to_a_few_shapes_never_far_beyond_its_examples():
  assert [device_pipeline.padded_size(n, 100) for n in (1, 18, 32, 33, 64, 65, 99, 100)] == [
      1, 32, 32, 64, 64, 100, 100, 100]
  assert [device_pipeline.padded_size(n, 96, 4) for n in (1, 5, 18, 40, 90)] == [4, 8, 32, 64, 96]  # 4 devices
  split = ArraySplit(np.zeros((118, 2, 2, 3), np.uint8), np.arange(118))
  shapes = [images.shape[0] for images, _, _ in device_pipeline.eval_batches(split, 100, 2)]
  assert shapes == [100, 32]  # 18 left over: 32 places, not 100
