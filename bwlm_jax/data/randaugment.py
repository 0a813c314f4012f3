"""RandAugment (Cubuk et al. 2020) in JAX, per example inside the jitted train step.

Each image takes `layers` operations in turn, each drawn uniformly from the paper's 14 (`OPS`), at one
magnitude m in [0, 10] (level m / 10; the sign of the signed operations drawn per image). The operations follow
PIL's ImageOps / ImageEnhance definitions (tested against PIL), the magnitudes timm's "increasing" ranges:
rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhance factors 1 +- 0.9, posterize down to 4 bits,
solarize from threshold 256 down to 0. Geometric operations sample the nearest pixel and fill with grey 128.
Pixels are floats in [0, 255] holding whole values (uint8 semantics); the streamed path un-normalises its
batch, applies these same operations and normalises again (`augmented_stream_batch`), so both pipelines
share one implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


OPS = ('identity', 'autocontrast', 'equalize', 'rotate', 'solarize', 'color', 'posterize', 'contrast',
       'brightness', 'sharpness', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
FILL = 128.0
MAX_MAGNITUDE = 10  # the magnitude scale (naive.randaugment_magnitude in [0, MAX_MAGNITUDE]), timm's and PaCo's


def _grey(image):
  """PIL's 'L' conversion in its fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
  rgb = image.astype(jnp.int32)
  grey = (19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 0x8000) >> 16
  return grey.astype(jnp.float32)


def _blend(image, degenerate, factor):
  """ImageEnhance (PIL's Image.blend): degenerate + factor * (image - degenerate), clipped to [0, 255] and
  truncated to a whole pixel."""
  return jnp.floor(jnp.clip(degenerate + factor * (image - degenerate), 0, 255))


def autocontrast(image):
  """Each channel stretched from its [min, max] to [0, 255] (unchanged where min == max)."""
  low, high = image.min(axis=(0, 1)), image.max(axis=(0, 1))
  # PIL's lookup int(i * scale + offset) in exact arithmetic: whole numbers (float32 would round differently).
  stretched = ((image - low).astype(jnp.int32) * 255) // jnp.maximum(high - low, 1).astype(jnp.int32)
  return jnp.clip(jnp.where(high > low, stretched, image), 0, 255)


def _equalize_channel(channel):
  """PIL's ImageOps.equalize of one channel: a lookup from the cumulative histogram, step = (N - the last
  used level's count) // 255."""
  values = channel.astype(jnp.int32)
  histogram = jnp.bincount(values.ravel(), length=256)
  last = jnp.max(jnp.where(histogram > 0, jnp.arange(256), -1))
  step = (histogram.sum() - histogram[last]) // 255
  before = jnp.cumsum(histogram) - histogram
  lut = jnp.clip((before + step // 2) // jnp.maximum(step, 1), 0, 255)
  return jnp.where(step > 0, lut[values].astype(channel.dtype), channel)


def equalize(image):
  return jnp.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def solarize(image, threshold):
  return jnp.where(image >= threshold, 255.0 - image, image)


def posterize(image, bits):
  """Keep the `bits` high bits of each pixel."""
  mask = jnp.left_shift(jnp.int32(0xFF), 8 - bits) & 0xFF
  return (image.astype(jnp.int32) & mask).astype(image.dtype)


def color(image, factor):
  return _blend(image, _grey(image)[..., None], factor)


def contrast(image, factor):
  """Blended with the grey image's mean (PIL: the rounded mean of the 'L' histogram)."""
  return _blend(image, jnp.floor(_grey(image).mean() + 0.5), factor)


def brightness(image, factor):
  return _blend(image, 0.0, factor)


def sharpness(image, factor):
  """Blended with PIL's SMOOTH filter ([[1,1,1],[1,5,1],[1,1,1]] / 13) inside, the border kept."""
  kernel = jnp.asarray([[1, 1, 1], [1, 5, 1], [1, 1, 1]], jnp.float32) / 13.0
  padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode='edge')
  height, width = image.shape[:2]
  smooth = sum(kernel[i, j] * padded[i:i + height, j:j + width] for i in range(3) for j in range(3))
  inside = jnp.zeros((height, width, 1), bool).at[1:-1, 1:-1].set(True)
  return _blend(image, jnp.where(inside, jnp.round(smooth), image), factor)


def affine(image, matrix):
  """PIL's Image.transform(AFFINE, matrix, NEAREST, fillcolor=128): output pixel (x, y) takes the input at
  (a x + b y + c, d x + e y + f), both measured from pixel centres."""
  height, width = image.shape[:2]
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32) + 0.5, jnp.arange(width, dtype=jnp.float32) + 0.5,
                        indexing='ij')
  a, b, c, d, e, f = (matrix[i] for i in range(6))
  source_x = jnp.floor(a * xs + b * ys + c).astype(jnp.int32)
  source_y = jnp.floor(d * xs + e * ys + f).astype(jnp.int32)
  inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
  taken = image[jnp.clip(source_y, 0, height - 1), jnp.clip(source_x, 0, width - 1)]
  return jnp.where(inside[..., None], taken, FILL)


def rotation_matrix(degrees, height: int, width: int):
  """PIL's Image.rotate(angle) about the centre as the inverse affine map (counter-clockwise for > 0)."""
  angle = -jnp.deg2rad(degrees)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  cx, cy = width / 2.0, height / 2.0
  return jnp.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy])


def _apply(index, image, level, sign):
  """Operation OPS[index] at `level` in [0, 1] with `sign` (+-1) for the signed ones."""
  height, width = image.shape[:2]
  zero, one = jnp.float32(0), jnp.float32(1)
  factor = 1.0 + 0.9 * level * sign
  branches = (
      lambda x: x,
      autocontrast,
      equalize,
      lambda x: affine(x, rotation_matrix(30.0 * level * sign, height, width)),
      lambda x: solarize(x, 256.0 - 256.0 * level),
      lambda x: color(x, factor),
      lambda x: posterize(x, 8 - jnp.int32(4 * level)),
      lambda x: contrast(x, factor),
      lambda x: brightness(x, factor),
      lambda x: sharpness(x, factor),
      lambda x: affine(x, jnp.stack([one, 0.3 * level * sign, zero, zero, one, zero])),
      lambda x: affine(x, jnp.stack([one, zero, zero, 0.3 * level * sign, one, zero])),
      lambda x: affine(x, jnp.stack([one, zero, 0.45 * level * sign * width, zero, one, zero])),
      lambda x: affine(x, jnp.stack([one, zero, zero, zero, one, 0.45 * level * sign * height])),
  )
  return jax.lax.switch(index, branches, image)


def apply_op(name: str, image, magnitude: float, sign: float = 1.0):
  """One named operation on one image (what the tests compare with PIL)."""
  level = jnp.float32(magnitude / MAX_MAGNITUDE)
  return _apply(OPS.index(name), jnp.asarray(image, jnp.float32), level, jnp.float32(sign))


def randaugment(key: jax.Array, images: jax.Array, layers: int, magnitude: float) -> jax.Array:
  """`layers` random operations per image of a batch [B, H, W, 3] of whole-valued pixels in [0, 255]."""
  level = jnp.float32(magnitude / MAX_MAGNITUDE)
  batch = images.shape[0]
  op_key, sign_key = jax.random.split(key)
  indices = jax.random.randint(op_key, (layers, batch), 0, len(OPS))
  signs = jnp.where(jax.random.bernoulli(sign_key, 0.5, (layers, batch)), 1.0, -1.0).astype(jnp.float32)
  out = images.astype(jnp.float32)
  for layer in range(layers):
    out = jax.vmap(lambda i, x, s: _apply(i, x, level, s))(indices[layer], out, signs[layer])
  return out.astype(images.dtype) if images.dtype == jnp.uint8 else out


def augmented_stream_batch(key: jax.Array, x: jax.Array, mean, std, layers: int, magnitude: float) -> jax.Array:
  """A normalised streamed batch through RandAugment: back to whole pixels, augmented, normalised again."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  std = jnp.asarray(std, jnp.float32) * 255.0
  pixels = jnp.clip(jnp.round(x.astype(jnp.float32) * std + mean), 0, 255)
  return ((randaugment(key, pixels, layers, magnitude) - mean) / std).astype(x.dtype)
