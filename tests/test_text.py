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
