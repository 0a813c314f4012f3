"""Image files a user hands in (a folder dataset, images to classify) are untrusted input.

Each is opened with a bound on its size, converted to 8-bit RGB whatever its mode (CMYK, palette,
16-bit, grey with alpha), and any failure is an error naming the file: not an image, cut short, more
pixels than `MAX_PIXELS` (a decompression bomb: a few hundred KB on disk, gigabytes once decoded).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from bwlm_jax.runtime.errors import UsageError

# PIL's own default limit (about 0.27 GB as 8-bit RGB). PIL only warns between it and twice it; here any
# image over it is refused, before its pixels are decoded.
MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# The bytes a complete file of a format ends with: JPEG's end-of-image marker, PNG's IEND chunk.
_END_MARKERS = {'JPEG': b'\xff\xd9', 'PNG': b'IEND\xaeB`\x82'}
_OPEN_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                Image.DecompressionBombWarning)


def _opened(path: str) -> Image.Image:
  """The image, header read and its size checked (pixels not decoded yet)."""
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    image = Image.open(path)
  if image.width * image.height > MAX_PIXELS:
    image.close()
    raise UsageError(f'image {path!r} has {image.width}x{image.height} pixels, more than the limit of {MAX_PIXELS:,} '
                     '(bwlm_jax.data.images.MAX_PIXELS): refused, as a decompression bomb would be.')
  return image


def _refusal(path: str, err: BaseException) -> UsageError:
  if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
    return UsageError(f'image {path!r} has more pixels than the limit of {MAX_PIXELS:,} (PIL: {err}): refused, as '
                      'a decompression bomb would be.')
  return UsageError(f'cannot read image {path!r}: {" ".join(str(err).split())[:160] or type(err).__name__}.')


def _to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB: 16- and 32-bit grey scaled down (PIL's own conversion clips them), palette transparency
  dropped after expansion, every other mode converted by PIL."""
  if image.mode.startswith('I'):
    values = np.asarray(image, np.float64)
    scale = 257.0 if image.mode.startswith('I;16') or values.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), 'L').convert('RGB')
  if image.mode == 'F':
    return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), 'L').convert('RGB')
  if image.mode == 'P' and 'transparency' in image.info:
    return image.convert('RGBA').convert('RGB')
  return image.convert('RGB')


def open_rgb(path: str) -> Image.Image:
  """The image in `path` decoded as 8-bit RGB; an error naming the file when it cannot be."""
  try:
    with _opened(path) as image:
      image.load()
      return _to_rgb(image)
  except UsageError:
    raise
  except _OPEN_ERRORS as err:
    raise _refusal(path, err) from None


def check_file(path: str) -> None:
  """Cheap check of a file to be decoded later (by tf.data): its header, its size, its structure
  (PIL's verify), and that a JPEG or PNG is not cut short. A file without its end marker is decoded in
  full to decide (some writers append data after it)."""
  try:
    with _opened(path) as image:
      kind = image.format
      image.verify()
    if not _ends_complete(path, kind):
      with _opened(path) as image:
        image.load()
  except UsageError:
    raise
  except _OPEN_ERRORS as err:
    raise _refusal(path, err) from None


def _ends_complete(path: str, kind: str) -> bool:
  marker = _END_MARKERS.get(kind)
  if marker is None:
    return True
  with open(path, 'rb') as f:
    f.seek(max(os.path.getsize(path) - 64, 0))
    return marker in f.read()
