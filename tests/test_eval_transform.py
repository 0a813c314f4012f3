"""How evaluation images become the model's input (`data.eval_transform`): against PIL by hand, read from the
metadata beside the weights, applied to the evaluation splits only, recorded and applied again by predict."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from bwlm_jax.data import eval_transform
from bwlm_jax.data.eval_transform import EvalTransform
from bwlm_jax.runtime.errors import UsageError


def test_the_shorter_side_to_side_over_crop_pct_then_the_centre():
  pixels = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)  # height 50, width 80
  image = Image.fromarray(pixels)
  view = EvalTransform('bicubic', 0.875).apply(image, 32)
  # by hand, as timm and torchvision: the shorter side (50) to floor(32 / 0.875) = 36, the width to
  # int(36 * 80 / 50) = 57; the crop at round(25 / 2) = 12 (Python rounds half to even), round(4 / 2) = 2
  resized = image.resize((57, 36), Image.BICUBIC)
  np.testing.assert_array_equal(view, np.asarray(resized.crop((12, 2, 44, 34))))
  whole = EvalTransform('bilinear', 1.0).apply(Image.fromarray(pixels[:, :50]), 50)
  np.testing.assert_array_equal(whole, pixels[:, :50])  # a square image at its own side: itself


@pytest.mark.parametrize('value,expected', [
    ('resize', None), ('bicubic:0.9', EvalTransform('bicubic', 0.9)), ('bilinear:1', EvalTransform('bilinear', 1.0))])
def test_the_values_of_the_field(value, expected):
  assert eval_transform.parse(value) == expected


@pytest.mark.parametrize('value', ['lanczos:0.9', 'bicubic', 'bicubic:1.2', 'bicubic:x', 'crop'])
def test_a_bad_value_is_one_line(value):
  with pytest.raises(UsageError, match=r"data.eval_transform=.*expected 'resize', 'source' or INTERPOLATION:CROP_PCT"):
    eval_transform.parse(value)


def test_the_sources_transform_from_the_metadata_beside_the_weights(tmp_path):
  from bwlm_jax.weights import transform_in_metadata
  timm_dir, clip_dir, bare = tmp_path / 'timm', tmp_path / 'clip', tmp_path / 'bare'
  for folder in (timm_dir, clip_dir, bare):
    folder.mkdir()
  (timm_dir / 'config.json').write_text(json.dumps({'architecture': 'vit_base_patch16_224', 'pretrained_cfg': {
      'interpolation': 'bicubic', 'crop_pct': 0.9, 'mean': [0.5] * 3, 'std': [0.5] * 3}}))
  (clip_dir / 'open_clip_config.json').write_text(json.dumps({'model_cfg': {}, 'preprocess_cfg': {
      'mean': [0.48, 0.46, 0.41], 'std': [0.27, 0.26, 0.28], 'interpolation': 'bicubic', 'resize_mode': 'shortest'}}))
  assert transform_in_metadata(str(timm_dir / 'model.safetensors')) == EvalTransform('bicubic', 0.9)
  assert transform_in_metadata(str(clip_dir / 'open_clip_model.safetensors')) == EvalTransform('bicubic', 1.0)
  assert transform_in_metadata(str(bare / 'w.safetensors')) is None
  (clip_dir / 'open_clip_config.json').write_text(json.dumps({'preprocess_cfg': {'resize_mode': 'squash'}}))
  with pytest.raises(UsageError, match="resize_mode 'squash' is not one bwlm-jax makes"):
    transform_in_metadata(str(clip_dir / 'open_clip_model.safetensors'))


def test_source_transform_end_to_end_recorded_and_predicted_alike(tmp_path):
  # timm's config.json beside a ResNet-18 file: the test and val images are made by its transform, the training
  # images are not; checkpoints and the export's sidecar record it, and predict makes the same input from a file.
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.predict import load_image
  from bwlm_jax.run.training_run import make_context, train_and_evaluate
  from bwlm_jax.weights import export_model
  from test_pretrained import _config, _folder, _generated_weights
  _folder(tmp_path / 'data', [12, 6, 3], size=40)
  (tmp_path / 'weights').mkdir()
  _generated_weights(tmp_path / 'weights' / 'r18.safetensors')
  (tmp_path / 'weights' / 'config.json').write_text(json.dumps({'architecture': 'resnet18', 'pretrained_cfg': {
      'interpolation': 'bicubic', 'crop_pct': 0.875}}))
  config = _config(tmp_path / 'data', tmp_path / 'weights' / 'r18.safetensors')
  config.data.eval_transform = 'source'
  train_and_evaluate(config, str(tmp_path / 'run'))
  ctx = make_context(config, str(tmp_path / 'fresh'))
  first_test = sorted(os.listdir(tmp_path / 'data' / 'test' / 'c0'))[0]
  path = str(tmp_path / 'data' / 'test' / 'c0' / first_test)
  expected = EvalTransform('bicubic', 0.875).apply(Image.open(path).convert('RGB'), 32)
  np.testing.assert_array_equal(ctx.dataset.test.images[0], expected)
  first_train = str(tmp_path / 'data' / 'train' / 'c0' / sorted(os.listdir(tmp_path / 'data' / 'train' / 'c0'))[0])
  np.testing.assert_array_equal(ctx.dataset.train.images[0],
                                np.asarray(Image.open(first_train).convert('RGB').resize((32, 32), Image.BILINEAR)))
  variables, meta = load_finished(str(tmp_path / 'run'), 'stage2')
  assert meta['eval_transform'] == {'interpolation': 'bicubic', 'crop_pct': 0.875}
  np.testing.assert_array_equal(load_image(path, 32, False, eval_transform.from_record(meta['eval_transform'])),
                                expected)
  sidecar = export_model(variables, 'resnet18', meta, str(tmp_path / 'out.safetensors'))
  assert sidecar['eval_transform'] == {'interpolation': 'bicubic', 'crop_pct': 0.875}


def test_source_without_metadata_or_on_a_fixed_size_source_is_one_line(tfds_dir, tmp_path):
  from bwlm_jax.config import validate_config
  from helpers import tiny_config
  from test_pretrained import _config
  config = _config(tmp_path / 'data', tmp_path / 'w.safetensors')
  config.data.eval_transform = 'source'
  with pytest.raises(UsageError, match='nothing beside .*w.safetensors says how its source evaluates'):
    validate_config(config)
  config = tiny_config(tfds_dir)
  config.data.eval_transform = 'bicubic:0.9'
  with pytest.raises(UsageError, match='applies to images resized to data.image_size .* embedded is kept at its own'):
    validate_config(config)
