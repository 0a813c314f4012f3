"""CLIP's tokenizer and text tower against open_clip's (a small CLIP made by open_clip:
tests/data/make_clip_text_fixture.py; the full-size comparison is in docs/REPRODUCING.md)."""

import gzip
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from bwlm_jax.models import clip_text
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.text.tokenizer import ClipTokenizer

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'clip_text')
MERGES = os.path.join(FIXTURE, 'merges.txt.gz')


@pytest.fixture(scope='module')
def fixture():
  with open(os.path.join(FIXTURE, 'texts.json'), encoding='utf-8') as file:
    info = json.load(file)
  expected = np.load(os.path.join(FIXTURE, 'expected.npz'))
  spec = clip_text.TextSpec(info['width'], info['depth'], info['heads'], info['embed'], vocab=info['vocab_size'])
  return info, expected, spec


def test_tokens_equal_open_clips(fixture):
  info, expected, _ = fixture
  tokens = ClipTokenizer.from_file(MERGES)(info['texts'])
  assert tokens.dtype == np.int32 and tokens.shape == (len(info['texts']), 77)
  np.testing.assert_array_equal(tokens, expected['tokens'])
  long_row = tokens[info['texts'].index('shark ' * 90)]  # cut at 77 and still ending with end-of-text
  assert long_row[0] == 755 and long_row[-1] == 756 and (long_row != 0).all()


def test_a_hub_tokenizer_json_gives_the_same_tokens(fixture, tmp_path):
  info, expected, _ = fixture
  with gzip.open(MERGES, 'rt', encoding='utf-8') as file:
    merges = [line for line in file.read().split('\n')[1:] if line]
  from bwlm_jax.text.tokenizer import byte_characters
  characters = byte_characters()
  vocab = characters + [c + '</w>' for c in characters] + [m.replace(' ', '') for m in merges]
  vocab = {token: i for i, token in enumerate(vocab + ['<|startoftext|>', '<|endoftext|>'])}
  path = tmp_path / 'tokenizer.json'
  path.write_text(json.dumps({'version': '1.0', 'model': {'type': 'BPE', 'vocab': vocab, 'merges': merges,
                                                           'end_of_word_suffix': '</w>'}}))
  np.testing.assert_array_equal(ClipTokenizer.from_file(str(path))(info['texts']), expected['tokens'])


@pytest.mark.parametrize('name,content,message', [
    ('missing.txt.gz', None, 'does not exist'),
    ('vocab.model', b'x', 'expected a CLIP merges list'),
    ('merges.txt', b'#version: 0.2\nnot a merge list at all\n', 'is not a BPE merges list'),
    ('tokenizer.json', b'{"model": {"type": "WordPiece", "vocab": {}}}', 'is not a CLIP tokenizer'),
    ('tokenizer.json', b'{"model": ', 'cannot be read')])
def test_bad_tokenizer_files_are_one_line(tmp_path, name, content, message):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UsageError, match=message) as error:
    ClipTokenizer.from_file(str(path))
  assert '\n' not in str(error.value) and name in str(error.value)


def test_text_embeddings_equal_open_clips(fixture):
  _, expected, spec = fixture
  state = load_file(os.path.join(FIXTURE, 'clip.safetensors'))
  assert any(name.startswith('visual.') for name in state)  # a whole CLIP file: the image tower is left
  params, scale = clip_text.from_state_dict(state, spec, 'clip.safetensors')
  embeddings = clip_text.TextTransformer(spec).apply({'params': params}, expected['tokens'])
  np.testing.assert_allclose(embeddings, expected['embeddings'], rtol=1e-5, atol=1e-5)
  assert scale == pytest.approx(float(np.exp(state['logit_scale'])))


def test_the_mask_is_causal_and_the_end_token_is_read(fixture):
  # Changing a token after end-of-text changes nothing; changing one before it changes the embedding.
  _, expected, spec = fixture
  params, _ = clip_text.from_state_dict(load_file(os.path.join(FIXTURE, 'clip.safetensors')), spec, 'fixture')
  tower = jax.jit(lambda tokens: clip_text.TextTransformer(spec).apply({'params': params}, tokens))
  row = expected['tokens'][:1].copy()
  end = int(np.argmax(row[0]))
  after, before = row.copy(), row.copy()
  after[0, end + 1] = 5
  before[0, end - 1] = 5
  np.testing.assert_array_equal(tower(after), tower(row))
  assert np.abs(np.asarray(tower(before)) - np.asarray(tower(row))).max() > 1e-3


def test_an_image_tower_alone_is_one_line(fixture):
  _, _, spec = fixture
  state = {k: v for k, v in load_file(os.path.join(FIXTURE, 'clip.safetensors')).items() if k.startswith('visual.')}
  with pytest.raises(UsageError, match='holds no CLIP text tower'):
    clip_text.from_state_dict(state, spec, 'image.safetensors')


def test_a_text_tower_of_another_shape_is_one_line(fixture):
  _, _, spec = fixture
  state = load_file(os.path.join(FIXTURE, 'clip.safetensors'))
  with pytest.raises(UsageError, match='does not fit'):
    clip_text.from_state_dict(state, clip_text.TEXT_SPECS['clip_vit_b16'], 'small.safetensors')


def test_every_clip_model_has_its_text_tower():
  from bwlm_jax.models import vit
  assert set(clip_text.TEXT_SPECS) == {name for name, spec in vit.SPECS.items() if spec.family == 'clip'}
  assert all(clip_text.TEXT_SPECS[n].quick_gelu == vit.SPECS[n].quick_gelu for n in clip_text.TEXT_SPECS)
  with pytest.raises(UsageError, match="model.name='vit_base_patch16' has no text tower"):
    clip_text.text_spec('vit_base_patch16')


@pytest.fixture
def small_clip(fixture, monkeypatch, tmp_path):
  """config.model of the fixture's CLIP under a CLIP model.name (its text tower's shape swapped in), the
  fixture's two templates in a file."""
  info, _, spec = fixture
  monkeypatch.setitem(clip_text.TEXT_SPECS, 'clip_vit_b16', spec)
  templates = tmp_path / 'templates.txt'
  templates.write_text('\n'.join(info['templates']) + '\n')
  return {'name': 'clip_vit_b16', 'text_from': os.path.join(FIXTURE, 'clip.safetensors'), 'tokenizer': MERGES,
          'prompts': str(templates), 'init_from': None}


@pytest.fixture
def small_clip_towers(fixture, monkeypatch):
  """The fixture's whole small CLIP as model.name clip_vit_b16: both towers' shapes swapped in."""
  from bwlm_jax.models import vit
  monkeypatch.setitem(clip_text.TEXT_SPECS, 'clip_vit_b16', fixture[2])
  monkeypatch.setitem(vit.SPECS, 'clip_vit_b16', vit.Spec('clip', 8, 32, 1, 2, embed=16, **vit.CLIP))


def test_zero_shot_classifier_equals_open_clips(fixture, small_clip):
  from bwlm_jax.text import zero_shot
  info, expected, _ = fixture
  embeddings, scale = zero_shot.class_embeddings(small_clip, info['classes'])
  np.testing.assert_allclose(embeddings, expected['zero_shot_classifier'].T, atol=2e-6)
  logits = zero_shot.zero_shot_logits(expected['images'], embeddings, scale)
  np.testing.assert_allclose(logits, expected['zero_shot_logits'], rtol=1e-5, atol=1e-5)


def test_one_template_is_one_embedding_per_class(fixture, small_clip):
  from bwlm_jax.text import zero_shot
  info, expected, spec = fixture
  one = dict(small_clip, prompts='a photo of a {}.')
  embeddings, _ = zero_shot.class_embeddings(one, info['classes'][:2])
  params, _ = clip_text.from_state_dict(load_file(small_clip['text_from']), spec, 'fixture')
  tokens = ClipTokenizer.from_file(MERGES)(['a photo of a goldfish.', 'a photo of a great white shark.'])
  direct = np.asarray(clip_text.TextTransformer(spec).apply({'params': params}, tokens))
  np.testing.assert_allclose(embeddings, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=2e-6)


@pytest.mark.parametrize('projected', [True, False])
def test_the_text_head_is_the_zero_shot_classifier(fixture, small_clip, projected):
  # Same predictions image for image; the same logits for an image whose embedding has the mean norm.
  from bwlm_jax.text import zero_shot
  info, _, _ = fixture
  embeddings, scale = zero_shot.class_embeddings(small_clip, info['classes'])
  rng = np.random.default_rng(0)
  projection = None if projected else rng.normal(size=(24, 16))
  features = rng.normal(size=(40, 16 if projected else 24)) * rng.uniform(0.5, 3.0, size=(40, 1))
  head = zero_shot.text_head(embeddings, scale, features, projection)
  logits = features @ np.asarray(head['dense']['kernel'], np.float64) + np.asarray(head['dense']['bias'])
  embedded = features if projected else features @ projection
  reference = zero_shot.zero_shot_logits(embedded, embeddings, scale)
  np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))
  norms = np.linalg.norm(embedded, axis=1, keepdims=True)
  np.testing.assert_allclose(logits, reference * norms / norms.mean(), rtol=1e-5, atol=1e-5)


def test_class_words_from_a_names_file(tmp_path):
  from bwlm_jax.text import classes
  tsv = tmp_path / 'words.txt'
  tsv.write_text('n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n')
  assert classes.class_words(['n01629819', 'n01443537'], str(tsv)) == ['European fire salamander', 'goldfish']
  as_json = tmp_path / 'names.json'
  as_json.write_text(json.dumps({'0': 'apple', '1': 'aquarium_fish'}))
  assert classes.class_words(['1', '0'], str(as_json)) == ['aquarium fish', 'apple']
  assert classes.class_words(['sea_lion', 'tree  frog']) == ['sea lion', 'tree frog']
  with pytest.raises(UsageError, match=r"names 1 of the 2 classes; missing: n09999999"):
    classes.class_words(['n01443537', 'n09999999'], str(tsv))
  bad = tmp_path / 'bad.txt'
  bad.write_text('n01443537 goldfish\n')
  with pytest.raises(UsageError, match=r"bad.txt' line 1: expected LABEL<TAB>WORDS"):
    classes.class_words(['n01443537'], str(bad))


@pytest.mark.parametrize('prompts,message', [
    ('a photo', 'every template holds {} once'), ('{} and {}', 'every template holds {} once'),
    ('missing_templates.txt', 'no such file of templates')])
def test_bad_prompts_are_one_line(prompts, message):
  from bwlm_jax.text import classes
  with pytest.raises(UsageError, match=message):
    classes.templates(prompts)


def test_a_text_head_start_is_checked_before_anything_runs(tmp_path):
  from bwlm_jax.config import base_config, validate_config
  config = base_config()
  config.naive.head_init = 'text'
  with pytest.raises(UsageError, match="model.name='resnet32' has no text tower"):
    validate_config(config)
  config.model.name, config.data.image_size = 'clip_vit_b16', 32
  with pytest.raises(UsageError, match='set model.text_from'):
    validate_config(config)
  clip_file = tmp_path / 'clip.safetensors'
  clip_file.write_bytes(open(os.path.join(FIXTURE, 'clip.safetensors'), 'rb').read())
  config.model.init_from = str(clip_file)
  with pytest.raises(UsageError, match='holds no bpe_simple_vocab_16e6.txt.gz or tokenizer.json'):
    validate_config(config)
  (tmp_path / 'bpe_simple_vocab_16e6.txt.gz').write_bytes(open(MERGES, 'rb').read())  # found beside the file
  config.model.prompts = 'a photo'
  with pytest.raises(UsageError, match='every template holds'):
    validate_config(config)
  config.model.prompts = 'a photo of a {}.'
  validate_config(config)


def test_zero_shot_clip_is_a_model_of_its_own(small_clip_towers, tmp_path):
  # The fixture's whole small CLIP (open_clip's) under a CLIP model.name, its image tower's shape swapped in too:
  # head_init='text' with 0 epochs is a finished model whose predictions are zero-shot CLIP's, image for image.
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.config import base_config
  from bwlm_jax.run.training_run import make_context, train_and_evaluate
  from bwlm_jax.text import zero_shot
  from test_pretrained import _folder
  _folder(tmp_path / 'data', [8, 4, 2], size=20)
  names = tmp_path / 'names.txt'
  names.write_text('c0\tgoldfish\nc1\ttiger shark, Galeocerdo cuvieri\nc2\ttree frog\n')
  config = base_config()
  config.data.name, config.data.folder, config.data.image_size = 'folder', str(tmp_path / 'data'), 16
  config.data.class_names_file = str(names)
  config.model.name, config.model.init_from = 'clip_vit_b16', os.path.join(FIXTURE, 'clip.safetensors')
  config.model.tokenizer = MERGES
  config.batch_size, config.eval_batch_size = 8, 16
  config.stages, config.naive.epochs, config.naive.head_init, config.naive.tune = 'naive', 0, 'text', 'head'
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  variables, meta = load_finished(str(tmp_path / 'run'), 'naive')
  assert meta['step'] == 0 and meta['finished']
  ctx = make_context(config, str(tmp_path / 'fresh'))
  features, labels = ctx.split_features(variables, ctx.dataset.eval_splits()['test'])
  embeddings, scale = zero_shot.class_embeddings(config.model, ['c0', 'c1', 'c2'], str(names))
  reference = zero_shot.zero_shot_logits(features, embeddings, scale)
  predicted = np.argmax(reference, axis=1)
  head = np.asarray(features, np.float64) @ np.asarray(variables['head']['dense']['kernel'], np.float64)
  np.testing.assert_array_equal(head.argmax(axis=1), predicted)
  train_features, _ = ctx.split_features(variables, ctx.dataset.train)  # the naive stage's training split
  mean_norm = np.linalg.norm(np.asarray(train_features, np.float64), axis=1).mean()
  norms = np.linalg.norm(np.asarray(features, np.float64), axis=1, keepdims=True)
  np.testing.assert_allclose(head, reference * norms / mean_norm, rtol=1e-4, atol=1e-4)
  assert results['models']['naive']['test']['all'] == pytest.approx(float((predicted == labels).mean()))


def test_zero_shot_scores_classes_without_training_images(small_clip_towers, tmp_path):
  # A class that only val and test hold (data.unseen_classes): zero-shot CLIP scores it from its words; the
  # results report it apart ('unseen', and within Few); BWLM's stages then train on the seen classes and keep it.
  import shutil
  from bwlm_jax.config import base_config
  from bwlm_jax.run.training_run import make_context, train_and_evaluate
  from bwlm_jax.text import zero_shot
  from test_pretrained import _folder
  _folder(tmp_path / 'data', [8, 6, 4, 1], size=20)
  shutil.rmtree(tmp_path / 'data' / 'train' / 'c3')
  names = tmp_path / 'names.txt'
  names.write_text('c0\tgoldfish\nc1\ttiger shark\nc2\ttree frog\nc3\tbald eagle\n')
  config = base_config()
  config.data.name, config.data.folder, config.data.image_size = 'folder', str(tmp_path / 'data'), 16
  config.data.class_names_file, config.data.unseen_classes = str(names), True
  config.model.name, config.model.init_from = 'clip_vit_b16', os.path.join(FIXTURE, 'clip.safetensors')
  config.model.tokenizer = MERGES
  config.batch_size, config.eval_batch_size = 8, 16
  config.naive.epochs, config.naive.head_init, config.naive.tune = 0, 'text', 'head'
  config.stage1.epochs, config.stage2.epochs = 1, 1
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['train_counts'] == [8, 6, 4, 0]
  ctx = make_context(config, str(tmp_path / 'fresh'))
  from bwlm_jax.checkpoints import load_finished
  variables, _ = load_finished(str(tmp_path / 'run'), 'naive')
  features, labels = ctx.split_features(variables, ctx.dataset.eval_splits()['test'])
  embeddings, scale = zero_shot.class_embeddings(config.model, ctx.dataset.class_names, str(names))
  correct = zero_shot.zero_shot_logits(features, embeddings, scale).argmax(axis=1) == labels
  zero_shot_test = results['models']['naive']['test']
  per_class = [correct[labels == c].mean() for c in range(4)]  # 8, 6, 4 and 0 training images: all Few
  assert zero_shot_test['per_class'] == pytest.approx(per_class) and zero_shot_test['unseen'] == per_class[3]
  assert zero_shot_test['few'] == pytest.approx(np.mean(per_class)) and zero_shot_test['many'] is None
  for model in ('stage1', 'stage2'):  # trained with the unseen class present: finite, reported the same way
    report = results['models'][model]['test']
    assert 0 <= report['unseen'] <= 1 and np.isfinite(report['calibration']['nll'])


def test_a_cosine_text_head_is_zero_shot_at_its_own_scale(fixture, small_clip):
  from bwlm_jax.models.head import apply_head
  from bwlm_jax.text import zero_shot
  info, _, _ = fixture
  embeddings, scale = zero_shot.class_embeddings(small_clip, info['classes'])
  features = np.random.default_rng(3).normal(size=(30, 16))
  head = zero_shot.text_head(embeddings, scale, features, kind='cosine', head_scale=25.0)
  np.testing.assert_allclose(apply_head(head, features), zero_shot.zero_shot_logits(features, embeddings, 25.0),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('source,data_name,width,epochs', [
    ('imagenet_lt', 'imagenet_lt', 32, 10), ('places_lt=/data/places', 'lists', 8, 10),
    ('inaturalist2018', 'i_naturalist2018', 256, 20), ('cifar100', 'cifar100', 4, 10)])
def test_lifts_recipe_as_a_config(source, data_name, width, epochs):
  # The values of LIFT's paper and code (configs/lift.py); the bottleneck width 2^floor(log2(C / 24)).
  from helpers import load_config_file
  config = load_config_file(f'configs/lift.py:{source},/w/clip.safetensors')
  assert (config.data.name, config.model.adapter_dim, config.naive.epochs) == (data_name, width, epochs)
  assert (config.model.name, config.model.head, config.model.head_scale) == ('clip_vit_b16', 'cosine', 25.0)
  assert (config.naive.tune, config.naive.loss, config.naive.head_init) == ('adapter', 'balanced_softmax', 'text')
  assert (config.naive.learning_rate, config.naive.weight_decay, config.naive.momentum) == (0.01, 5e-4, 0.9)
  assert (config.batch_size, config.data.test_views, config.stages) == (128, 'five_crop', 'naive')
  assert config.model.prompts == 'a photo of a {}.' and config.data.pipeline == 'stream'


def _lift_config(tmp_path):
  """configs/lift.py on a 3-class folder with the small CLIP: 16 px, batch 8, adapters of width 4."""
  from helpers import load_config_file
  from test_pretrained import _folder
  _folder(tmp_path / 'data', [12, 6, 3], size=20)
  config = load_config_file(f'configs/lift.py:{tmp_path / "data"},{os.path.join(FIXTURE, "clip.safetensors")}')
  assert config.model.adapter_dim == 1  # LIFT's width for 3 classes
  config.model.adapter_dim = 4  # one hidden unit can be dead for every token of so small a network
  config.model.tokenizer, config.data.image_size, config.data.pipeline = MERGES, 16, 'device'
  config.batch_size, config.eval_batch_size = 8, 16
  return config


def test_lift_on_a_folder_runs_end_to_end(small_clip_towers, tmp_path):
  # The recipe: adapters and the cosine head train from the text start, evaluation on five crops.
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.run.training_run import train_and_evaluate
  config = _lift_config(tmp_path)
  config.naive.epochs = 2
  results = train_and_evaluate(config, str(tmp_path / 'run'))
  variables, meta = load_finished(str(tmp_path / 'run'), 'naive')
  assert meta['finished'] and results['test_views'] == 'five_crop'
  assert float(variables['head']['cosine']['scale']) == 25.0
  adapters = [block['adapter']['up']['kernel'] for name, block in variables['backbone'].items()
              if name.startswith('resblocks_')]
  assert adapters and all(np.abs(np.asarray(k)).max() > 0 for k in adapters)  # zero at the start, trained
  assert 0.0 <= results['models']['naive']['test']['all'] <= 1.0


def test_the_tuning_study_puts_zero_shot_beside_the_frozen_heads_and_lift(small_clip_towers, tmp_path):
  # launch/tune.py with a whole CLIP file: zero-shot CLIP, BWLM's frozen heads, and LIFT's recipe (adapters, the
  # text-started cosine head), each a row chosen on validation.
  from bwlm_jax.studies.base import run_study
  from bwlm_jax.studies.tune import Tune, default_grid
  config = _lift_config(tmp_path)
  config.stage2.epochs, config.stage2.select = 2, 'none'
  grid = default_grid()
  grid.modes, grid.losses, grid.head_inits = ('adapter',), ('balanced_softmax',), ('text',)
  grid.learning_rate, grid.epochs, grid.zero_shot = (0.01,), (1,), True
  rows = run_study(Tune(grid), config, str(tmp_path / 'run'))
  assert [row.name for row in rows] == ['BWLM (frozen)', 'CE linear probe (frozen)', 'cRT (frozen)', 'zero-shot CLIP',
                                        'adapter + balanced_softmax (text: zero-shot start)', 'best on validation']
  zero_shot = json.load(open(tmp_path / 'run' / 'tuning' / 'zero-shot' / 'config.json'))['naive']
  assert (zero_shot['epochs'], zero_shot['head_init']) == (0, 'text')
  assert all(row.kind != 'failed' for row in rows)
  config.model.tokenizer = str(tmp_path / 'missing.txt.gz')  # checked with the whole grid, before anything runs
  with pytest.raises(UsageError, match=r'tuning.*tokenizer file .*missing.txt.gz does not exist'):
    run_study(Tune(grid), config, str(tmp_path / 'run2'))
  assert not (tmp_path / 'run2').exists()


def test_a_tokenizer_of_another_vocabulary_is_one_line(fixture, small_clip, tmp_path):
  from bwlm_jax.text import zero_shot
  with gzip.open(MERGES, 'rt', encoding='utf-8') as file:
    lines = file.read().split('\n')
  shorter = tmp_path / 'merges.txt'
  shorter.write_text('\n'.join(lines[:101]))  # the header and 100 merges: a vocabulary of 614, not 757
  with pytest.raises(UsageError, match=r'merges.txt has 614 tokens; the text tower of .* reads 757: a tokenizer '
                                       r'of another model'):
    zero_shot.class_embeddings(dict(small_clip, tokenizer=str(shorter)), fixture[0]['classes'])
