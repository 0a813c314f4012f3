"""How an evaluation image (val, test, and every image `predict` reads) becomes the model's input:
`data.eval_transform`.

- `resize` (default): the pipeline's own: images kept in memory are resized whole to S x S (bilinear); streamed
  ones have their shorter side resized to S * 256 / 224 (bilinear) and the centre S x S cropped.
- `source`: what the weights' source evaluates with, read from the metadata beside model.init_from (timm's
  config.json: `pretrained_cfg.interpolation` and `crop_pct`; open_clip's open_clip_config.json: its
  `preprocess_cfg` interpolation, the shorter side resized to S and the centre cropped; an export's sidecar).
- `INTERPOLATION:CROP_PCT` (e.g. `bicubic:0.9`, timm's ViTs): the shorter side resized to S / CROP_PCT with
  bilinear or bicubic interpolation (PIL's, as timm and torchvision resize), the centre S x S cropped.
Training images are not touched. Checkpoints and exports record the transform; `predict` applies it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
from PIL import Image

from bwlm_jax.runtime.errors import UsageError

INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
STREAM_RESIZE_RATIO = 256 / 224  # the streamed pipeline's own: the shorter side to side * 256 / 224, the centre


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """The shorter side resized to side / crop_pct with `interpolation`, then the centre side x side cropped, with
  timm's and torchvision's arithmetic: the shorter side floor(side / crop_pct), the longer int(shorter * long /
  short), the crop's corner round((size - side) / 2)."""
  interpolation: str
  crop_pct: float

  def apply(self, image: Image.Image, side: int) -> np.ndarray:
    """uint8 [side, side, 3] of an RGB PIL image."""
    short = math.floor(side / self.crop_pct)
    if image.width <= image.height:
      width, height = short, int(short * image.height / image.width)
    else:
      width, height = int(short * image.width / image.height), short
    if (width, height) != image.size:
      image = image.resize((width, height), INTERPOLATIONS[self.interpolation])
    left, top = int(round((width - side) / 2.0)), int(round((height - side) / 2.0))
    return np.asarray(image.crop((left, top, left + side, top + side)), np.uint8)


def parse(value: str, field: str = 'data.eval_transform') -> Optional[EvalTransform]:
  """`INTERPOLATION:CROP_PCT` as an EvalTransform; 'resize' as None (the pipeline's own); a one-line error."""
  if value == 'resize':
    return None
  interpolation, _, crop = value.partition(':')
  try:
    crop_pct = float(crop)
  except ValueError:
    crop_pct = -1.0
  if interpolation not in INTERPOLATIONS or not 0 < crop_pct <= 1:
    raise UsageError(f"{field}={value!r}: expected 'resize', 'source' or INTERPOLATION:CROP_PCT with INTERPOLATION "
                     f'one of {", ".join(INTERPOLATIONS)} and 0 < CROP_PCT <= 1 (e.g. bicubic:0.9).')
  return EvalTransform(interpolation, crop_pct)


def from_record(record) -> Optional[EvalTransform]:
  """The transform a checkpoint or sidecar records ({'interpolation', 'crop_pct'}), None for none."""
  return EvalTransform(record['interpolation'], float(record['crop_pct'])) if record else None


def image_view(image: Image.Image, side: int, transform: Optional[EvalTransform], streamed: bool) -> np.ndarray:
  """An evaluation image as the run's pipeline gives it to the model (`transform`, else the pipeline's own)."""
  if transform is not None:
    return transform.apply(image, side)
  if streamed:  # the streamed pipeline's own view, as `predict` has always made it
    scale = side * STREAM_RESIZE_RATIO / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)), np.uint8)
  return np.asarray(image.resize((side, side), Image.BILINEAR) if image.size != (side, side) else image, np.uint8)
