"""CLIP's byte-level BPE tokenizer (Radford et al. 2021), built with the `tokenizers` library from the files that
come with the weights: open_clip's merges list (`bpe_simple_vocab_16e6.txt.gz`, plain or gzipped) or a hub
checkpoint's `tokenizer.json`.

A text is cleaned as open_clip cleans it (ftfy's repairs, HTML entities undone twice, runs of whitespace made one
space, lower case), split by CLIP's pattern (contractions, runs of letters, single digits, runs of other
symbols), each piece's UTF-8 bytes mapped to printable characters and merged by rank with `</w>` ending the
piece. A row of tokens is start-of-text, the pieces' ids, end-of-text, zeros up to the context length; a longer
text is cut and still ends with end-of-text. Equal to open_clip's `tokenize` (tests/test_text.py; the full
vocabulary in docs/REPRODUCING.md).
"""

from __future__ import annotations

import gzip
import html
import json
import os

import numpy as np

from bwlm_jax.runtime.errors import UsageError

CONTEXT_LENGTH = 77  # every CLIP text tower's
# CLIP's split: its two special tokens, English contractions, runs of letters, one digit, runs of other symbols.
SPLIT_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MERGES_SUFFIXES = ('.txt', '.txt.gz')
START, END = '<start_of_text>', '<end_of_text>'
HUB_START, HUB_END = '<|startoftext|>', '<|endoftext|>'  # the same two tokens in a hub tokenizer.json


def byte_characters() -> list[str]:
  """The printable characters CLIP's vocabulary starts with, in its order: the printable Latin-1 bytes as
  themselves, then each other byte (in byte order) as chr(256), chr(257), ... (GPT-2's table; the ByteLevel
  pre-tokenizer maps bytes to the same characters)."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clean(text: str) -> str:
  """open_clip's 'lower' cleaning: ftfy's repairs, HTML entities undone twice, whitespace runs one space, lower."""
  import ftfy
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return ' '.join(text.split()).lower()


class ClipTokenizer:
  """Texts -> int32 [N, context_length] token rows, as CLIP's text tower reads them."""

  def __init__(self, tokenizer, start_id: int, end_id: int, source: str):
    self._tokenizer = tokenizer
    self.start_id, self.end_id, self.source = start_id, end_id, source
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_file(cls, path: str) -> 'ClipTokenizer':
    """From a merges list (`*.txt`, `*.txt.gz`: open_clip's) or a `tokenizer.json`; one-line errors for a file
    that is missing or is not a CLIP tokenizer."""
    if not os.path.isfile(path):
      raise UsageError(f'tokenizer file {path} does not exist (give the bpe_simple_vocab_16e6.txt.gz or the '
                       'tokenizer.json that comes with the CLIP weights).')
    if path.endswith('.json'):
      return cls._from_json(path)
    if not path.endswith(MERGES_SUFFIXES):
      raise UsageError(f'tokenizer file {path}: expected a CLIP merges list (.txt, .txt.gz) or a tokenizer.json.')
    return cls._from_merges(path)

  @classmethod
  def _from_merges(cls, path: str) -> 'ClipTokenizer':
    try:
      opener = gzip.open if path.endswith('.gz') else open
      with opener(path, 'rt', encoding='utf-8') as file:
        lines = file.read().split('\n')
    except (OSError, UnicodeDecodeError, EOFError) as err:
      raise UsageError(f'tokenizer file {path} cannot be read: {err}') from None
    # The first line is a version header; CLIP keeps the first 49,152 - 256 - 2 merges (a vocabulary of 49,408).
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1] if line.strip()]
    if not merges or any(len(pair) != 2 for pair in merges):
      raise UsageError(f'tokenizer file {path} is not a BPE merges list (lines of two symbols after a header).')
    characters = byte_characters()
    vocab = characters + [c + '</w>' for c in characters] + [''.join(pair) for pair in merges] + [START, END]
    return cls._build({token: i for i, token in enumerate(vocab)}, merges, len(vocab) - 2, len(vocab) - 1, path)

  @classmethod
  def _from_json(cls, path: str) -> 'ClipTokenizer':
    try:
      with open(path, encoding='utf-8') as file:
        model = json.load(file).get('model', {})
    except (OSError, ValueError) as err:
      raise UsageError(f'tokenizer file {path} cannot be read: {err}') from None
    vocab, merges = model.get('vocab'), model.get('merges')
    if model.get('type') != 'BPE' or not isinstance(vocab, dict) or not merges \
        or HUB_START not in vocab or HUB_END not in vocab:
      raise UsageError(f'tokenizer file {path} is not a CLIP tokenizer (a BPE model with {HUB_START} and '
                       f'{HUB_END}).')
    merges = [tuple(m.split(' ')) if isinstance(m, str) else tuple(m) for m in merges]
    return cls._build(vocab, merges, vocab[HUB_START], vocab[HUB_END], path)

  @classmethod
  def _build(cls, vocab: dict, merges: list, start_id: int, end_id: int, source: str) -> 'ClipTokenizer':
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix='</w>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior='removed', invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return cls(tokenizer, start_id, end_id, source)

  def __call__(self, texts, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    texts = [texts] if isinstance(texts, str) else list(texts)
    encoded = self._tokenizer.encode_batch([clean(text) for text in texts], add_special_tokens=False)
    rows = np.zeros((len(texts), context_length), np.int32)
    for row, encoding in zip(rows, encoded):
      ids = [self.start_id, *encoding.ids, self.end_id][:context_length]
      ids[-1] = self.end_id
      row[:len(ids)] = ids
    return rows
