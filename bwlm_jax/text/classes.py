"""What each class is called in words, and the prompts its text embedding is made from.

A class's words: the source's own label name (CIFAR's and tfds's label names, an image folder's class folder
names), or, with `data.class_names_file`, what that file maps the label name to. The file has one class a line,
`LABEL<TAB>WORDS` (ImageNet's `words.txt` and timm's `imagenet_synset_to_lemma.txt` are of this form: a WordNet
id, then its synonyms separated by commas, of which the first is taken), or is a JSON object {label: words}.
Underscores in a name read as spaces. Prompts: one template with `{}` where the class goes (LIFT's single template
'a photo of a {}.' by default), or a text file of templates, one a line, whose embeddings are averaged (CLIP's
prompt ensembling).
"""

from __future__ import annotations

import json
import os

from bwlm_jax.runtime.errors import UsageError

DEFAULT_TEMPLATE = 'a photo of a {}.'  # LIFT's (Shi et al. 2024) single template


def read_name_map(path: str) -> dict[str, str]:
  """{label: words} from a `LABEL<TAB>WORDS` file or a JSON object; one-line errors naming the file and line."""
  if not os.path.isfile(path):
    raise UsageError(f'data.class_names_file={path!r}: no such file.')
  try:
    with open(path, encoding='utf-8') as file:
      text = file.read()
  except (OSError, UnicodeDecodeError) as err:
    raise UsageError(f'data.class_names_file={path!r} cannot be read: {err}') from None
  if path.endswith('.json'):
    try:
      mapping = json.loads(text)
    except ValueError as err:
      raise UsageError(f'data.class_names_file={path!r} is not valid JSON: {err}') from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) and v.strip() for v in mapping.values()):
      raise UsageError(f'data.class_names_file={path!r}: expected a JSON object of label -> words.')
    return {str(label): words.strip() for label, words in mapping.items()}
  mapping = {}
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    label, tab, words = line.partition('\t')
    if not tab or not words.strip():
      raise UsageError(f'data.class_names_file={path!r} line {number}: expected LABEL<TAB>WORDS, got {line[:60]!r}.')
    mapping[label.strip()] = words.split(',')[0].strip()
  return mapping


def class_words(class_names, names_file: str = '') -> list[str]:
  """The words of each class (in label order); with `names_file`, every class must be in it."""
  mapping = read_name_map(names_file) if names_file else {}
  if mapping:
    missing = [name for name in class_names if name not in mapping]
    if missing:
      raise UsageError(f'data.class_names_file={names_file!r} names {len(class_names) - len(missing)} of the '
                       f'{len(class_names)} classes; missing: {", ".join(missing[:5])}'
                       + (f' and {len(missing) - 5} more' if len(missing) > 5 else '') + '.')
  return [' '.join(mapping.get(name, name).replace('_', ' ').split()) for name in class_names]


def templates(prompts: str) -> list[str]:
  """`model.prompts`: one template with '{}', or a .txt file of templates (one a line); each holds '{}' once."""
  if prompts.endswith('.txt'):
    if not os.path.isfile(prompts):
      raise UsageError(f'model.prompts={prompts!r}: no such file of templates.')
    with open(prompts, encoding='utf-8') as file:
      found = [line.strip() for line in file if line.strip()]
  else:
    found = [prompts]
  bad = [t for t in found if t.count('{}') != 1]
  if not found or bad:
    raise UsageError(f'model.prompts={prompts!r}: every template holds {{}} once, where the class goes (e.g. '
                     f'{DEFAULT_TEMPLATE!r}); got {bad[0] if bad else "no template"!r}.')
  return found


def prompts(words: list[str], template_list: list[str]) -> list[list[str]]:
  """[class][template] prompt texts."""
  return [[template.replace('{}', name) for template in template_list] for name in words]
