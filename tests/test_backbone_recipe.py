"""The backbone stages' recipe: the losses on soft labels against their integer forms and a NumPy
transcription, mixup and CutMix arithmetic inside the step, samplers, deferred re-weighting, RandAugment
against PIL, a run that trains and resumes with them, and recipes chosen on validation (`launch/recipe.py`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bwlm_jax import losses
from bwlm_jax.data import device_pipeline, randaugment, sampling
from bwlm_jax.config import validate_config
from bwlm_jax.runtime.errors import Interrupted, UsageError
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.run.training_run import train_and_evaluate
from bwlm_jax.train.mixing import Mixing, cutmix_box, mix, smoothed_targets
from helpers import tiny_config
from test_losses import COUNTS, LABELS, LOGITS, np_log_softmax

SETTING = HeadSetting(alpha=0.3, beta=0.999, gamma=2.0)


def _loss(name, labels, logits=LOGITS):
  return float(losses.head_loss(name, jnp.asarray(logits, jnp.float32), jnp.asarray(labels), COUNTS, SETTING))


@pytest.mark.parametrize('name', losses.LOSSES)
def test_a_soft_loss_is_the_expectation_of_its_integer_form(name):
  onehot = np.eye(7, dtype=np.float32)[LABELS]
  np.testing.assert_allclose(_loss(name, onehot), _loss(name, LABELS), rtol=1e-6)
  partners, lam = LABELS[::-1], 0.37
  soft = lam * onehot + (1 - lam) * onehot[::-1]
  per_example = [lam * _loss(name, LABELS[i:i + 1], LOGITS[i:i + 1]) +
                 (1 - lam) * _loss(name, partners[i:i + 1], LOGITS[i:i + 1]) for i in range(len(LABELS))]
  np.testing.assert_allclose(_loss(name, soft), np.mean(per_example), rtol=2e-5)


def test_label_smoothing_cross_entropy_by_hand():
  eps = 0.1
  targets = smoothed_targets(jnp.asarray(LABELS), 7, eps)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  log_p = np_log_softmax(LOGITS)
  expected = -((1 - eps) * log_p[np.arange(len(LABELS)), LABELS] + eps / 7 * log_p.sum(-1)).mean()
  np.testing.assert_allclose(float(losses.cross_entropy(jnp.asarray(LOGITS, jnp.float32), targets)), expected,
                             rtol=1e-5)


def _batch():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 8, 10, 3)), jnp.float32)
  return x, jnp.arange(6)  # six distinct labels: each target row names its two images' shares


def test_mixup_blends_image_i_with_image_b_minus_1_minus_i_by_the_targets_share():
  x, labels = _batch()
  out, targets = mix(jax.random.key(3), x, labels, 6, Mixing(mixup_alpha=0.4))
  lam = float(targets[0, 0])
  assert 0 < lam < 1 and float(targets[0, 5]) == pytest.approx(1 - lam, abs=1e-6)
  np.testing.assert_allclose(out, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
  again, _ = mix(jax.random.key(3), x, labels, 6, Mixing(mixup_alpha=0.4))
  np.testing.assert_array_equal(out, again)  # a function of the key alone: a resumed step mixes alike
  other, _ = mix(jax.random.key(4), x, labels, 6, Mixing(mixup_alpha=0.4))
  assert not np.array_equal(out, other)


def test_cutmix_pastes_one_box_and_the_targets_count_its_pixels():
  x, labels = _batch()
  for seed in range(5):
    out, targets = mix(jax.random.key(seed), x, labels, 6, Mixing(cutmix_alpha=1.0))
    from_partner = np.asarray(out != x).all(-1)  # [B, H, W]: where image i shows its partner's pixels
    assert (from_partner == from_partner[0]).all()  # one box for the batch
    rows, cols = np.nonzero(from_partner[0])
    if rows.size:  # a rectangle
      assert from_partner[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    np.testing.assert_allclose(targets[:, ::-1].diagonal(), from_partner[0].mean(), rtol=1e-6)
    np.testing.assert_allclose(targets.diagonal(), 1 - from_partner[0].mean(), rtol=1e-6)
  mask, kept = cutmix_box(jax.random.key(0), jnp.float32(0.75), 8, 8)  # a 4x4 box, clipped at the borders
  assert int(mask.sum()) <= 16 and float(kept) == pytest.approx(1 - int(mask.sum()) / 64)


def test_mixing_off_for_a_batch_keeps_it_and_smooths_only():
  x, labels = _batch()
  out, targets = mix(jax.random.key(0), x, labels, 6, Mixing(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0,
                                                             label_smoothing=0.1))
  np.testing.assert_array_equal(out, x)
  np.testing.assert_allclose(targets, smoothed_targets(labels, 6, 0.1))
  mixed = [bool((mix(jax.random.key(s), x, labels, 6, Mixing(mixup_alpha=1.0, prob=0.5))[0] != x).any())
           for s in range(40)]
  assert 10 <= sum(mixed) <= 30  # about half of the batches


def test_a_run_with_mixing_resumes_equal_to_an_uninterrupted_run_and_bad_values_are_one_error(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive'
  config.naive.mixup_alpha, config.naive.cutmix_alpha, config.naive.label_smoothing = 0.4, 1.0, 0.1
  config.naive.loss, config.naive.sampler = "balanced_softmax", "square_root"
  config.checkpoint_every_steps = 5
  straight = train_and_evaluate(config, str(tmp_path / 'straight'))
  with pytest.raises(Interrupted):
    train_and_evaluate(config, str(tmp_path / 'stopped'), stop_after_steps=5)
  resumed = train_and_evaluate(config, str(tmp_path / 'stopped'))
  assert resumed['models']['naive']['test']['per_class'] == straight['models']['naive']['test']['per_class']
  plain = tiny_config(tfds_dir, epochs=1)
  plain.stages = 'naive'
  assert train_and_evaluate(plain, str(tmp_path / 'plain'))['models']['naive']['val'] != \
      straight['models']['naive']['val']  # the options reach the step
  for field, value, message in (('mixup_alpha', -1.0, 'naive.mixup_alpha must be >= 0'),
                                ('label_smoothing', 1.0, 'label_smoothing in \\[0, 1\\)'),
                                ('mix_prob', 1.5, 'mix_prob must be in \\[0, 1\\]')):
    bad = tiny_config(tfds_dir)
    bad.naive[field] = value
    with pytest.raises(UsageError, match=message):
      validate_config(bad)


def _class_frequencies(tables, labels, epoch, steps_per_epoch=100, batch_size=256):
  """The class shares of one epoch's 25,600 draws (a share's standard error is under 0.0032)."""
  draw = jax.jit(jax.vmap(lambda step: sampling.class_balanced_indices(jax.random.key(0), step, tables, batch_size,
                                                                       steps_per_epoch)))
  drawn = np.asarray(draw(epoch * steps_per_epoch + jnp.arange(steps_per_epoch))).ravel()
  return np.bincount(labels[drawn], minlength=4) / drawn.size


def test_each_sampler_draws_its_class_frequencies():
  counts = np.array([400, 100, 25, 4])
  labels = np.repeat(np.arange(4), counts)
  sqrt = np.sqrt(counts) / np.sqrt(counts).sum()
  assert sampling.sampler_tables('uniform', labels, 4, 5) is None
  tables = sampling.sampler_tables('square_root', labels, 4, 5)
  np.testing.assert_allclose(_class_frequencies(tables, labels, 0), sqrt, atol=0.01)
  np.testing.assert_allclose(_class_frequencies(sampling.sampler_tables('class_balanced', labels, 4, 5), labels, 0),
                             0.25, atol=0.01)
  progressive = sampling.sampler_tables('progressive', labels, 4, 5)  # epochs 0..4: n/N -> uniform
  for epoch, share in ((0, 0.0), (2, 0.5), (4, 1.0)):
    expected = (1 - share) * counts / counts.sum() + share * 0.25
    np.testing.assert_allclose(_class_frequencies(progressive, labels, epoch), expected, atol=0.01)


def test_a_class_drawn_sampler_needs_the_images_in_memory(tfds_dir):
  from bwlm_jax.train.feeders import check_backbone_samplers
  from bwlm_jax.config import parse_stages
  config = tiny_config(tfds_dir)
  config.stages, config.naive.sampler = 'naive,stage1', 'progressive'

  class Streamed:
    in_memory = False

  with pytest.raises(UsageError, match='naive.sampler=progressive draws batches by class, which streamed data'):
    check_backbone_samplers(config, Streamed(), parse_stages(config))
  config.naive.sampler = 'sqrt'
  with pytest.raises(UsageError, match=r"naive.sampler must be one of \('uniform', 'square_root'"):
    validate_config(config)


@pytest.mark.parametrize('name', ['ce', 'balanced_softmax'])
def test_deferred_reweighting_is_the_weighted_mean_from_its_start_step_on(name):
  from bwlm_jax.train.mixing import Reweighting, reweighted
  weights = losses.class_balanced_weights(COUNTS, 0.9999)
  schedule = Reweighting(start_step=40, class_weights=weights)
  for targets in (np.eye(7, dtype=np.float32)[LABELS], smoothed_targets(jnp.asarray(LABELS), 7, 0.2)):
    per_example = np.array([_loss(name, targets[i:i + 1], LOGITS[i:i + 1]) for i in range(len(LABELS))])
    w = np.asarray(targets) @ np.asarray(weights)
    np.testing.assert_allclose(_loss(name, reweighted(jnp.asarray(targets), jnp.int32(40), schedule)),
                               (w * per_example).sum() / w.sum(), rtol=2e-5)
    np.testing.assert_allclose(_loss(name, reweighted(jnp.asarray(targets), jnp.int32(39), schedule)),
                               per_example.mean(), rtol=2e-5)


def test_deferred_reweighting_starts_at_its_epoch_and_bad_values_are_one_error(tfds_dir):
  from bwlm_jax.run.training_run import make_context
  from bwlm_jax.stages import NAIVE
  from bwlm_jax.train.loop import _reweighting, stage_split
  config = tiny_config(tfds_dir, epochs=3)
  config.naive.drw_epoch = 2
  ctx = make_context(config, '/nonexistent')
  split = stage_split(config, ctx.dataset, NAIVE)
  schedule = _reweighting(ctx, config.naive, split, steps_per_epoch=10)
  counts = np.bincount(split.labels, minlength=20)
  assert schedule.start_step == 20
  np.testing.assert_allclose(schedule.class_weights, losses.class_balanced_weights(counts, 0.9999), rtol=1e-6)
  for value in (3, -1):
    config.naive.drw_epoch = value
    with pytest.raises(UsageError, match=r'naive.drw_epoch must be a whole number in \[0, naive.epochs\)'):
      validate_config(config)


def _photos(count=4, size=32):
  """Smooth colour images with noise (varied histograms, edges and flat regions, like photos)."""
  from PIL import Image
  rng = np.random.default_rng(7)
  coarse = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BILINEAR)
            for _ in range(count)]
  return [np.clip(np.asarray(c, np.int32) + rng.integers(-12, 13, (size, size, 3)), 0, 255).astype(np.uint8)
          for c in coarse]


def _pil_op(name, image, magnitude, sign):
  """The operation as PIL computes it, at the magnitudes of data/randaugment.py."""
  from PIL import Image, ImageEnhance, ImageOps
  im, level = Image.fromarray(image), magnitude / 10
  factor, grey, (w, h) = 1 + 0.9 * level * sign, (128,) * 3, im.size

  def affine(*matrix):
    return im.transform(im.size, Image.AFFINE, matrix, Image.NEAREST, fillcolor=grey)

  ops = {'identity': lambda: im, 'autocontrast': lambda: ImageOps.autocontrast(im),
         'equalize': lambda: ImageOps.equalize(im),
         'rotate': lambda: im.rotate(30 * level * sign, resample=Image.NEAREST, fillcolor=grey),
         'solarize': lambda: ImageOps.solarize(im, 256 - 256 * level),
         'color': lambda: ImageEnhance.Color(im).enhance(factor),
         'posterize': lambda: ImageOps.posterize(im, 8 - int(4 * level)),
         'contrast': lambda: ImageEnhance.Contrast(im).enhance(factor),
         'brightness': lambda: ImageEnhance.Brightness(im).enhance(factor),
         'sharpness': lambda: ImageEnhance.Sharpness(im).enhance(factor),
         'shear_x': lambda: affine(1, 0.3 * level * sign, 0, 0, 1, 0),
         'shear_y': lambda: affine(1, 0, 0, 0.3 * level * sign, 1, 0),
         'translate_x': lambda: affine(1, 0, 0.45 * level * sign * w, 0, 1, 0),
         'translate_y': lambda: affine(1, 0, 0, 0, 1, 0.45 * level * sign * h)}
  return np.asarray(ops[name](), np.float32)


# Float rounding (PIL blends in C floats, its autocontrast lookup in doubles) moves a few pixels by one level.
_ROUNDED_OPS = ('autocontrast', 'color', 'contrast')


@pytest.mark.parametrize('name', randaugment.OPS)
def test_each_randaugment_operation_equals_pils(name):
  for image in _photos():
    for magnitude, sign in ((3, 1.0), (9, -1.0), (10, 1.0)):
      ours = np.asarray(randaugment.apply_op(name, image, magnitude, sign))
      difference = np.abs(ours - _pil_op(name, image, magnitude, sign))
      if name in _ROUNDED_OPS:
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (name, magnitude)
      else:
        np.testing.assert_array_equal(ours, _pil_op(name, image, magnitude, sign), err_msg=f'{name} m={magnitude}')


def test_randaugment_is_a_function_of_seed_and_step_on_both_pipelines():
  images = jnp.asarray(np.stack(_photos(8)))
  labels = jnp.arange(8)
  spec = sampling.BatchSpec(batch_size=8, steps_per_epoch=1, augment=False, mean=(0.5, 0.4, 0.3),
                            std=(0.2, 0.25, 0.3), dtype=jnp.float32, randaugment=(2, 9.0))
  rng = jax.random.key_data(jax.random.key(0))
  first, _ = sampling.device_batch(rng, 3, images, labels, spec, None)
  again, _ = sampling.device_batch(rng, 3, images, labels, spec, None)
  later, _ = sampling.device_batch(rng, 4, images, labels, spec, None)
  np.testing.assert_array_equal(first, again)  # a resumed step augments alike
  assert not np.array_equal(first, later)
  plain, _ = sampling.device_batch(rng, 3, images, labels,
                                   sampling.BatchSpec(**{**spec.__dict__, 'randaugment': (0, 9.0)}), None)
  changed = np.abs(np.asarray(first) - np.asarray(plain)).reshape(8, -1).max(-1) > 0
  assert changed.sum() >= 6  # two operations per image: at most the identity twice leaves one unchanged
  key = jax.random.key(5)  # the streamed path: the same operations on its normalised batch
  x = device_pipeline.normalize(images, spec.mean, spec.std)
  streamed = randaugment.augmented_stream_batch(key, x, spec.mean, spec.std, 2, 9.0)
  expected = device_pipeline.normalize(randaugment.randaugment(key, images, 2, 9.0), spec.mean, spec.std)
  np.testing.assert_allclose(streamed, expected, atol=1e-5)


def _recipe_config(tfds_dir):
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.recipe import FIELDS, default_grid
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive'
  grid = default_grid()
  for field in FIELDS:
    grid[field] = None
  grid.label_smoothing = (0.0, 0.1)  # 0.0 is the configured value: one candidate, not two
  grid.randaugment_layers = (2,)
  config.checkpoint_every_steps = 4
  return config, grid


def test_recipes_are_chosen_on_validation_resume_and_a_rerun_trains_nothing(tfds_dir, tmp_path, capsys):
  import json
  from bwlm_jax import selection
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.recipe import Recipe, candidate_config, candidates
  config, grid = _recipe_config(tfds_dir)
  found = candidates(config, grid)
  assert [c.folder for c in found] == ['default', 'label_smoothing=0.1', 'randaugment_layers=2']
  workdir = tmp_path / 'run'
  with pytest.raises(Interrupted):  # a candidate stopped part-way resumes inside the recipe run
    train_and_evaluate(candidate_config(config, found[2]), str(workdir / 'recipe' / found[2].folder),
                       stop_after_steps=4)
  rows = run_study(Recipe(grid), config, str(workdir))
  out = capsys.readouterr().out
  assert 'naive: resuming at step 4' in out
  assert [row.name for row in rows] == ['as configured', 'label_smoothing=0.1', 'randaugment_layers=2',
                                        'best on validation']
  scores = [selection.score(json.load(open(workdir / 'recipe' / c.folder / 'results.json'))['models']['naive']['val'],
                            'balanced_accuracy') for c in found]
  assert [row.score for row in rows[:3]] == scores
  chosen = json.load(open(workdir / 'recipe' / 'best.json'))
  assert chosen['val_score'] == max(scores) and rows[-1].setting == found[int(np.argmax(scores))].name
  assert chosen['recipe'] == dict(found[int(np.argmax(scores))].changes)
  saved = json.load(open(workdir / 'recipe' / 'randaugment_layers=2' / 'config.json'))
  assert saved['naive']['randaugment_layers'] == saved['stage1']['randaugment_layers'] == 2
  assert len({row.test['all'] for row in rows[:3]}) > 1  # the candidates trained differently
  again = run_study(Recipe(grid), config, str(workdir))
  assert capsys.readouterr().out.count('naive: finished earlier') == 3
  assert [row.test for row in again] == [row.test for row in rows]


def test_a_recipe_that_varies_nothing_or_a_bad_value_is_one_error(tfds_dir):
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.recipe import candidates
  config, grid = _recipe_config(tfds_dir)
  grid.label_smoothing = ()
  with pytest.raises(UsageError, match='recipe.label_smoothing is empty'):
    candidates(config, grid)
  grid.label_smoothing, grid.randaugment_layers = None, None
  with pytest.raises(UsageError, match='the recipe grid varies nothing'):
    candidates(config, grid)
  grid.randaugment_magnitude = (12.0,)
  with pytest.raises(UsageError, match=r'recipe candidate randaugment_magnitude=12 \(recipe.randaugment_magnitude\): naive.randaugment_layers must'):
    candidates(config, grid)
  grid.randaugment_magnitude = None
  grid.sampler = ('square_root,class_balanced',)  # how a flag --grid.sampler=A,B arrives
  assert [c.folder for c in candidates(config, grid)] == ['default', 'sampler=square_root', 'sampler=class_balanced']
  grid.randaugment_magnitude, grid.combine = (5.0,), 'every'
  with pytest.raises(UsageError, match="recipe.combine must be one of"):
    candidates(config, grid)


def test_recipes_that_differ_in_learning_rate_weight_decay_or_smoothing_train_at_once_as_they_would_alone(
    tfds_dir, tmp_path, capsys):
  from bwlm_jax import checkpoints
  from bwlm_jax.data import load_dataset
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.recipe import candidate_config, candidates, Recipe, together, train_together
  from bwlm_jax.train.loop import StepBudget
  config, grid = _recipe_config(tfds_dir)
  grid.label_smoothing, grid.randaugment_layers = (0.2,), None
  # Below lr 0.01 these 10 steps are not chaotic: at lr 0.05, scaling the initial weights by 1 + 2^-23 moves them
  # 4e-4 by step 10 (stacked and alone differ in rounding), at 0.005 the members match alone to 6e-8 on an AMD
  # EPYC (Zen 4) and to 1.1e-5 on an Intel Xeon (AVX-512, other convolution kernels), against parameters of up to
  # about 0.2 that the members' different settings move by far more.
  grid.weight_decay, grid.learning_rate = (0.05,), (0.005,)
  grid.backbones_at_once = 2
  found = candidates(config, grid)
  groups = together(grid, found)
  assert [[c.folder for c in group] for group in groups] == [['default', 'weight_decay=0.05'],
                                                             ['learning_rate=0.005', 'label_smoothing=0.2']]
  mixed = grid.copy_and_resolve_references()
  mixed.loss, mixed.backbones_at_once = ('balanced_softmax',), 4  # another loss never joins
  assert [[c.folder for c in group] for group in together(mixed, candidates(config, mixed))] == [
      ['default', 'weight_decay=0.05', 'learning_rate=0.005', 'label_smoothing=0.2']]

  workdir = tmp_path / 'run'
  with pytest.raises(Interrupted):  # the stacked run resumes inside the recipe run (printed: 3 stacked runs)
    train_together(config, str(workdir), groups[1], load_dataset(config.data), StepBudget(4))
  rows = run_study(Recipe(grid), config, str(workdir))
  out = capsys.readouterr().out
  assert out.count('recipes at once under vmap') == 3 and 'naive: resuming at step 4' in out
  assert out.count('naive: finished earlier') == 4  # every candidate's own run found its backbone trained
  for candidate in found[1:]:
    alone = tmp_path / 'alone' / candidate.folder
    train_and_evaluate(candidate_config(config, candidate), str(alone))
    stacked, single = [checkpoints.restore_finished(checkpoints.stage_directory(d, 'naive'))[0]['params']
                       for d in (workdir / 'recipe' / candidate.folder, alone)]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5, err_msg=candidate.folder),
                 stacked, single)
  assert len({row.test['all'] for row in rows[:4]}) > 1  # the members trained differently
  run_study(Recipe(grid), config, str(workdir))
  again = capsys.readouterr().out
  assert 'at once' not in again and again.count('naive: finished earlier') == 4
  grid.backbones_at_once = 0
  with pytest.raises(UsageError, match='recipe.backbones_at_once must be a whole number >= 1, got 0'):
    candidates(config, grid)


def test_the_image_side_is_a_recipe_field_of_the_whole_run_and_needs_images_it_can_resize(tfds_dir, tmp_path):
  import json
  from bwlm_jax import checkpoints
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.recipe import candidates, Recipe
  from test_sources import _write_folder
  counts = {'ant': 40, 'bee': 20, 'cow': 10}
  for split, per_class in (('train', counts), ('val', dict.fromkeys(counts, 3)), ('test', dict.fromkeys(counts, 3))):
    _write_folder(tmp_path / 'data', split, per_class)
  config, grid = _recipe_config(tfds_dir)
  config.data.name, config.data.folder, config.data.image_size = 'folder', str(tmp_path / 'data'), 16
  config.data.imbalance_factor = config.data.max_count = None
  grid.label_smoothing = grid.randaugment_layers = None
  grid.image_size = (16, 24)  # 16 is the configured side: one candidate, not two
  found = candidates(config, grid)
  assert [c.folder for c in found] == ['default', 'image_size=24']
  rows = run_study(Recipe(grid), config, str(tmp_path / 'run'))
  assert [row.name for row in rows] == ['as configured', 'image_size=24', 'best on validation']
  for candidate, side in zip(found, (16, 24)):  # each run trained on images of its own side, stage 2 included
    run = tmp_path / 'run' / 'recipe' / candidate.folder
    assert json.load(open(run / 'config.json'))['data']['image_size'] == side
    assert checkpoints.finished_meta(checkpoints.stage_directory(str(run), 'naive'))['image_size'] == side
  embedded, embedded_grid = _recipe_config(tfds_dir)
  embedded_grid.image_size = (24,)
  with pytest.raises(UsageError, match=r"recipe.image_size: data.name='embedded' is kept in memory at its images'"):
    candidates(embedded, embedded_grid)
  embedded.data.pipeline = 'stream'  # streamed, the side is the crop's
  assert 'image_size=24' in [c.folder for c in candidates(embedded, embedded_grid)]
