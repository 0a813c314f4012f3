"""The convolution the models use: XLA's, with the weight gradient computed in chunks of images where XLA:CPU
is slow at it (AVX2-only x86 CPUs, Intel's AVX-512 ones).

On AVX2-only CPUs XLA:CPU's weight gradient of a small 3x3 convolution is an order of magnitude slower than
its forward pass; on an Intel Xeon with AVX-512 2-4x slower at ResNet shapes; not so on AMD's AVX-512 CPUs.
Written as a forward convolution of the transposed input with the output gradient as its kernel, per chunk of
images small enough to stay in the core's cache, it is several times faster there (figures:
docs/PERFORMANCE.md, "AVX2-only CPUs" and "Intel AVX-512", and `benchmarks/conv_shapes.py`). The forward pass
and the input gradient stay XLA's, and so does everything on other CPUs and on accelerators. The CPU kinds
(`cpu_kind`) that take it are CHUNKED_GRADIENT_KINDS.

A 1x1 convolution of stride 1 (EfficientNet-Lite's expansions and projections, the ResNets' bottlenecks) is the
matrix product it is, everywhere: XLA:CPU's convolution is several times slower at it, forward and backward.
A depthwise convolution (EfficientNet-Lite's: one kernel per channel) is, on CPUs, computed as KH x KW shifted,
per-channel multiply-adds of the padded input: element-wise work XLA fuses, forward and both gradients, where
XLA:CPU's grouped convolution with one channel per group is many times slower (docs/PERFORMANCE.md,
"Depthwise convolutions"); on the CHUNKED_GRADIENT_KINDS its input gradient is taken phase by phase and its
kernel gradient per chunk of images, elsewhere the input gradient XLA's one image at a time.
`BWLM_DEPTHWISE_CONV` chooses: `auto` (shifted on a CPU, XLA's on an accelerator), `xla` or `shifted`.

A dense convolution with a small output (at most PATCH_PRODUCT_MAX_OUTPUT positions an image: the ImageNet
ResNets' last stage at 224 px), and a strided 1x1 one (their shortcuts), is, on the PATCH_PRODUCT_KINDS, one
matrix product of its input patches (the window's taps side by side along the channels) with the kernel
flattened, and autodiff's gradients of that: XLA:CPU's convolution at 7x7 outputs and 256-512 channels is
1.6-2.3x slower, forward and backward, and its strided 1x1 shortcuts' training passes 1.3-2.2x slower
(docs/PERFORMANCE.md, "The convolution passes against PyTorch's").

A grouped convolution's weight gradient (ResNeXt's) is, on every CPU, the diagonal blocks of the dense
convolution's (`grouped_weight_gradient`): XLA:CPU's own is 20-130x slower than the whole dense one.

`BWLM_CONV_WEIGHT_GRADIENT` chooses: `auto` (the default: chunked on the CHUNKED_GRADIENT_KINDS, patch products
on the PATCH_PRODUCT_KINDS, grouped ones as dense blocks on every CPU, unless `BWLM_CPU_TUNING=0`), `xla` (XLA's
for every convolution) or `chunked` (wherever the shape allows: 2-D, NHWC/HWIO, no dilation; for tests and
benchmarks).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from bwlm_jax.runtime import process_setup

MODE_VARIABLE, MODES = process_setup.CONV_MODE_VARIABLE, process_setup.CONV_MODES
# Input bytes per chunk of images (x's share; the output gradient's is about the same): the fastest of 64 KiB
# to 2 MiB on an AVX2-only CPU with 1 MiB L2 per core (docs/PERFORMANCE.md, "AVX2-only CPUs").
CHUNK_BYTES = 256 * 1024
# Input bytes per chunk of a depthwise kernel gradient: the fastest of 1 image, 64 KiB, 256 KiB and 1 MiB on the
# AVX2-only CPU (EfficientNet-Lite0's shapes at 64 px, batch 64; docs/PERFORMANCE.md, "Depthwise convolutions").
DEPTHWISE_CHUNK_BYTES = 1024 * 1024
# The CPU kinds (`cpu_kind`) whose training steps measured faster with the chunked weight gradient and the phased
# depthwise gradients (an AVX2-only AMD Zen 3; an Intel Xeon with AVX-512: docs/PERFORMANCE.md). AMD's AVX-512
# CPUs keep XLA's weight gradient and the per-image depthwise input gradient, as measured there.
CHUNKED_GRADIENT_KINDS = ('avx2', 'intel-avx512')
# The CPU kinds whose small-output dense convolutions measured faster as one product of the input patches (an
# Intel Xeon with AVX-512; not measured elsewhere), the most output positions an image for which they take it
# (7x7: 1.6-2.3x faster at 256-512 channels, level at 128; at 14x14 and 8x8 slower), and the most taps (3x3: the
# one kernel measured; a ViT's 16x16 patch embedding keeps XLA's convolution). A strided 1x1 convolution takes it
# whatever its output (its patches are a strided slice of the input: forward and backward 1.3-2.2x faster at the
# ResNets' shortcuts, the forward alone within 2-5 ms either way).
PATCH_PRODUCT_KINDS = ('intel-avx512',)
PATCH_PRODUCT_MAX_OUTPUT = 7 * 7
PATCH_PRODUCT_MAX_TAPS = 3 * 3
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def chunked_weight_gradient(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether convolutions traced now take the chunked weight gradient (`BWLM_CONV_WEIGHT_GRADIENT`)."""
  mode = process_setup.conv_mode(environ)
  if mode == 'auto':
    return tuned_cpu_kind(environ) in CHUNKED_GRADIENT_KINDS and jax.default_backend() == 'cpu'
  return mode == 'chunked'


def tuned_cpu_kind(environ: Mapping[str, str] = os.environ) -> str | None:
  """This CPU's kind (`cpu_kind`), or None where the CPU choices are turned off (`BWLM_CPU_TUNING=0`)."""
  return cpu_kind() if environ.get(process_setup.OPT_OUT, '1') != '0' else None


def cpu_kind(cpuinfo_path: str = '/proc/cpuinfo') -> str:
  """The kind of CPU the convolution forms were chosen for: 'avx2' (AVX2 and no AVX-512), 'intel-avx512',
  'amd-avx512' (by its vendor), or 'other' (no AVX2, another vendor, or /proc/cpuinfo unreadable)."""
  vendor, flags = cpu_info(cpuinfo_path)
  if 'avx2' not in flags:
    return 'other'
  if 'avx512f' not in flags:
    return 'avx2'
  return {'GenuineIntel': 'intel-avx512', 'AuthenticAMD': 'amd-avx512'}.get(vendor, 'other')


@functools.cache
def cpu_info(cpuinfo_path: str = '/proc/cpuinfo') -> tuple[str, frozenset[str]]:
  """The first `vendor_id` and the first `flags` of a /proc/cpuinfo file ('' and none if it cannot be read)."""
  fields = {}
  try:
    with open(cpuinfo_path) as cpuinfo:
      for line in cpuinfo:
        name, _, value = line.partition(':')
        fields.setdefault(name.strip(), value.strip())
  except OSError:
    pass
  return fields.get('vendor_id', ''), frozenset(fields.get('flags', '').split())


def patch_products(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether small-output and strided 1x1 dense convolutions traced now take the patch product (`patch_product`):
  on the PATCH_PRODUCT_KINDS with `BWLM_CONV_WEIGHT_GRADIENT=auto`, unless `BWLM_CPU_TUNING=0`."""
  mode = process_setup.conv_mode(environ)
  return mode == 'auto' and tuned_cpu_kind(environ) in PATCH_PRODUCT_KINDS and jax.default_backend() == 'cpu'


def grouped_as_dense_blocks(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether grouped convolutions traced now take their weight gradient as the diagonal blocks of the dense one
  (`grouped_weight_gradient`): on every CPU unless `BWLM_CONV_WEIGHT_GRADIENT=xla` or `BWLM_CPU_TUNING=0`;
  `chunked` forces it."""
  mode = process_setup.conv_mode(environ)
  if mode == 'auto':
    return tuned_cpu_kind(environ) is not None and jax.default_backend() == 'cpu'
  return mode == 'chunked'


def shifted_depthwise(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether depthwise convolutions traced now take the shifted multiply-adds (`BWLM_DEPTHWISE_CONV`)."""
  mode = process_setup.conv_mode(environ, process_setup.DEPTHWISE_VARIABLE)
  if mode == 'auto':
    return jax.default_backend() == 'cpu'
  return mode == 'shifted'


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated` (the same arguments; flax's `nn.Conv(conv_general_dilated=...)`), in the form this
  module chooses: a depthwise one as shifted multiply-adds where `shifted_depthwise()`, a 1x1 one of stride 1 as a
  matrix product, a small-output or strided 1x1 dense one as a patch product where `patch_products()`, the chunked
  weight gradient where `chunked_weight_gradient()` and the shape allow it, a grouped one's as dense blocks where
  `grouped_as_dense_blocks()`, else XLA's."""
  pads = _chunkable_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                         batch_group_count, precision, preferred_element_type)
  depthwise = pads is not None and feature_group_count == lhs.shape[-1] == rhs.shape[-1] and rhs.shape[2] == 1
  if depthwise and feature_group_count > 1 and shifted_depthwise():
    return _depthwise(lhs, rhs, tuple(window_strides), pads)
  if (pads is not None and rhs.shape[:2] == (1, 1) and tuple(window_strides) == (1, 1) and feature_group_count == 1
      and not any(map(any, pads))):  # a 1x1 convolution is a matrix product: XLA:CPU's dot is far faster
    return lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ())))
  if pads is not None and feature_group_count == 1 and _patch_product_pays(lhs, rhs, window_strides, pads):
    return patch_product(lhs, rhs, tuple(window_strides), pads)
  grouped = pads is not None and feature_group_count > 1 and not depthwise
  if pads is None or not (chunked_weight_gradient() or (grouped and grouped_as_dense_blocks())):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type)
  return _conv(lhs, rhs, tuple(window_strides), pads, feature_group_count)


def _chunkable_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                    batch_group_count, precision, preferred_element_type):
  """The explicit (low, high) pads of a convolution the chunked gradient covers, else None."""
  if lhs.ndim != 4 or batch_group_count != 1 or precision is not None or preferred_element_type is not None:
    return None
  if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))):
    return None
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if numbers != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(low), int(high)) for low, high in padding)
  return pads if min(min(pair) for pair in pads) >= 0 else None


def _patch_product_pays(lhs, rhs, strides, pads) -> bool:
  """Whether a dense NHWC/HWIO convolution takes the patch product: a 1x1 one (of stride > 1: its patches are a
  strided slice), or one of at most PATCH_PRODUCT_MAX_TAPS taps and PATCH_PRODUCT_MAX_OUTPUT output positions an
  image, where `patch_products()`."""
  taps = rhs.shape[0] * rhs.shape[1]
  out_h, out_w = _output_sides(lhs.shape[1:3], rhs.shape[:2], strides, pads)
  small = taps == 1 or (taps <= PATCH_PRODUCT_MAX_TAPS and out_h * out_w <= PATCH_PRODUCT_MAX_OUTPUT)
  return small and patch_products()


def patch_product(x, kernel, strides: Sequence[int], pads):
  """A dense NHWC/HWIO convolution as one matrix product: each output position's input patch (the window's taps,
  in HWIO's order, side by side along the channels) times the kernel laid out [KH * KW * C, O]."""
  patches = jnp.concatenate(window_taps(x, kernel.shape[:2], strides, pads), axis=-1)
  return lax.dot_general(patches, kernel.reshape(-1, kernel.shape[-1]), (((3,), (0,)), ((), ())))


def _xla_conv(lhs, rhs, strides, pads, groups):
  return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=_NHWC, feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(lhs, rhs, strides, pads, groups):
  return _xla_conv(lhs, rhs, strides, pads, groups)


def _conv_forward(lhs, rhs, strides, pads, groups):
  return _xla_conv(lhs, rhs, strides, pads, groups), (lhs, rhs)


def _xla_input_gradient(x, kernel, output_gradient, strides, pads, groups):
  return jax.vjp(lambda x: _xla_conv(x, kernel, strides, pads, groups), x)[1](output_gradient)[0]


def _xla_input_gradient_per_image(x, kernel, output_gradient, strides, pads, groups):
  """XLA's input gradient of a depthwise convolution one image at a time: XLA:CPU's of a whole batch is 3-48x
  slower (EfficientNet-Lite's shapes; grouped and dense ones are faster whole)."""
  return lax.map(lambda pair: _xla_input_gradient(pair[0][None], kernel, pair[1][None], strides, pads, groups)[0],
                 (x, output_gradient))


def _conv_backward(strides, pads, groups, residuals, output_gradient):
  lhs, rhs = residuals
  depthwise = groups > 1 and rhs.shape[2] == 1
  input_gradient = (_xla_input_gradient_per_image if depthwise else _xla_input_gradient)(
      lhs, rhs, output_gradient, strides, pads, groups)
  if groups > 1 and not depthwise:
    kernel_gradient = grouped_weight_gradient(lhs, output_gradient, rhs.shape, strides, pads, groups,
                                              chunked_weight_gradient())
  else:
    kernel_gradient = weight_gradient(lhs, output_gradient, rhs.shape, strides, pads, groups)
  return input_gradient, kernel_gradient.astype(rhs.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def weight_gradient(x, output_gradient, kernel_shape: Sequence[int], strides: Sequence[int],
                    pads: Sequence[tuple[int, int]], groups: int = 1, chunk: int | None = None):
  """dL/dkernel [KH, KW, C/groups, O] (float32) of an NHWC/HWIO convolution, summed over chunks of `chunk`
  images (default: CHUNK_BYTES of `x` each).

  Per chunk: dW[i, j, c, o] = sum over n, h, w of x_padded[n, s*h + i, s*w + j, c] * dy[n, h, w, o], which is
  a forward convolution of x_padded laid out [C, H, W, n] (channels as its batch) with dy laid out
  [h, w, n, O] as the kernel, dilated by the stride; groups pair input and output channels through
  `batch_group_count`.
  """
  kernel_h, kernel_w = kernel_shape[:2]
  batch, out_h, out_w, _ = output_gradient.shape
  (stride_h, stride_w), ((top, bottom), (left, right)) = strides, pads
  reach_h, reach_w = (out_h - 1) * stride_h + kernel_h, (out_w - 1) * stride_w + kernel_w

  def chunk_gradient(x_chunk, dy_chunk):
    padded = jnp.pad(x_chunk, ((0, 0), (top, bottom), (left, right), (0, 0)))[:, :reach_h, :reach_w]
    gradient = lax.conv_general_dilated(
        padded.transpose(3, 1, 2, 0), dy_chunk.transpose(1, 2, 0, 3), (1, 1), 'VALID',
        rhs_dilation=(stride_h, stride_w), dimension_numbers=_NHWC, batch_group_count=groups,
        preferred_element_type=jnp.float32)
    return gradient.transpose(1, 2, 0, 3)

  if chunk is None:
    chunk = max(1, CHUNK_BYTES // (x[0].size * x.dtype.itemsize))
  return _summed_over_chunks(chunk_gradient, x, output_gradient, chunk,
                             (*kernel_shape[:3], output_gradient.shape[-1]))


def grouped_weight_gradient(x, output_gradient, kernel_shape: Sequence[int], strides: Sequence[int],
                            pads: Sequence[tuple[int, int]], groups: int, chunked: bool):
  """dL/dkernel [KH, KW, C/groups, O] of a grouped NHWC/HWIO convolution: the diagonal blocks (each group's
  inputs against its outputs) of the dense convolution's weight gradient [KH, KW, C, O], that one chunked
  (`weight_gradient`) or XLA's. XLA:CPU's grouped weight gradient is 20-130x slower than the dense gradient it is
  a part of (ResNeXt-50's shapes; docs/PERFORMANCE.md, "Grouped convolutions")."""
  kernel_h, kernel_w, per_group, outputs = kernel_shape
  dense_shape = (kernel_h, kernel_w, per_group * groups, outputs)
  if chunked:
    dense = weight_gradient(x, output_gradient, dense_shape, strides, pads)
  else:
    dense = jax.vjp(lambda kernel: _xla_conv(x, kernel, strides, pads, 1), jnp.zeros(dense_shape, x.dtype))[1](
        output_gradient)[0]
  blocks = dense.reshape(kernel_h, kernel_w, groups, per_group, groups, outputs // groups)
  return jnp.einsum('ijgagb->ijagb', blocks).reshape(kernel_shape)


def _summed_over_chunks(chunk_gradient, x, output_gradient, chunk: int, shape):
  """The float32 sum of `chunk_gradient(x's chunk, output_gradient's chunk)` (of `shape`) over chunks of `chunk`
  images: a `lax.scan` over the whole chunks, the remainder after."""
  batch = x.shape[0]
  if batch <= chunk:
    return chunk_gradient(x, output_gradient)
  whole = batch // chunk * chunk

  def add_chunk(total, chunks):
    return total + chunk_gradient(*chunks), None

  total, _ = lax.scan(add_chunk, jnp.zeros(shape, jnp.float32),
                      (x[:whole].reshape(-1, chunk, *x.shape[1:]),
                       output_gradient[:whole].reshape(-1, chunk, *output_gradient.shape[1:])))
  if whole < batch:
    total = total + chunk_gradient(x[whole:], output_gradient[whole:])
  return total


def _output_sides(sides: Sequence[int], window: Sequence[int], strides: Sequence[int], pads) -> tuple[int, int]:
  """The (height, width) of the positions a window takes sliding over `sides` padded by `pads`."""
  return tuple((size + low + high - extent) // stride + 1
               for size, extent, stride, (low, high) in zip(sides, window, strides, pads))


def window_taps(x, window: Sequence[int], strides: Sequence[int], pads, pad_value=0) -> list:
  """Each offset of a window sliding over NHWC `x` padded with `pad_value`: the strided slice [N, Ho, Wo, C] of
  the padded input at that offset, in window order (row by row)."""
  window_h, window_w = window
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=pad_value)
  out_h, out_w = _output_sides(x.shape[1:3], window, strides, pads)
  return [lax.slice(padded, (0, i, j, 0),
                    (padded.shape[0], i + strides[0] * (out_h - 1) + 1, j + strides[1] * (out_w - 1) + 1,
                     padded.shape[3]), (1, *strides, 1))
          for i in range(window_h) for j in range(window_w)]


def depthwise_multiply_adds(x, kernel, strides: tuple[int, int], pads):
  """A depthwise NHWC convolution (kernel [KH, KW, 1, C]) as the sum over the kernel's offsets of the strided
  slice of the padded input at that offset times that offset's per-channel weights; accumulated in float32."""
  total = None
  for tap, window in enumerate(window_taps(x, kernel.shape[:2], strides, pads)):
    i, j = divmod(tap, kernel.shape[1])
    term = window.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
    total = term if total is None else total + term
  return total.astype(x.dtype)


def depthwise_input_gradient(output_gradient, kernel, input_shape: Sequence[int], strides: tuple[int, int], pads):
  """dL/dx of `depthwise_multiply_adds` as shifted multiply-adds of the output gradient, phase by phase.

  Along each axis, padded-input position p = s * m + r (phase r < s) is reached by the kernel taps i = r + s * t
  from outputs m - t, so each phase is a stride-1 sum of shifted slices of dy times those taps, and the phases
  interleave into the padded input's gradient (no zeros multiplied: XLA's transpose of a strided slice is a pad
  with interior zeros, slow on CPUs). Accumulated in float32.
  """
  kernel_h, kernel_w = kernel.shape[:2]
  (stride_h, stride_w), ((top, _), (left, _)) = strides, pads
  batch, height, width, channels = input_shape
  out_h, out_w = output_gradient.shape[1:3]
  rows, cols = -(-(top + height) // stride_h), -(-(left + width) // stride_w)  # phase lengths that cover the input
  taps_h, taps_w = -(-kernel_h // stride_h), -(-kernel_w // stride_w)
  dy = jnp.pad(output_gradient.astype(jnp.float32),
               ((0, 0), (taps_h - 1, max(0, rows - out_h)), (taps_w - 1, max(0, cols - out_w)), (0, 0)))
  phases = []
  for r in range(stride_h):
    row = []
    for q in range(stride_w):
      total = jnp.zeros((batch, rows, cols, channels), jnp.float32)
      for t in range(-(-(kernel_h - r) // stride_h)):  # the taps r + s * t within the kernel
        for u in range(-(-(kernel_w - q) // stride_w)):
          window = lax.slice(dy, (0, taps_h - 1 - t, taps_w - 1 - u, 0),
                             (batch, taps_h - 1 - t + rows, taps_w - 1 - u + cols, channels))
          total = total + window * kernel[r + stride_h * t, q + stride_w * u, 0].astype(jnp.float32)
      row.append(total)
    phases.append(jnp.stack(row, axis=3))  # [n, rows, cols, stride_w, C]
  padded = jnp.stack(phases, axis=2).reshape(batch, rows * stride_h, cols * stride_w, channels)
  return padded[:, top:top + height, left:left + width].astype(output_gradient.dtype)


def depthwise_kernel_gradient(x, output_gradient, kernel_shape: Sequence[int], strides: tuple[int, int], pads,
                              chunk_bytes: int = DEPTHWISE_CHUNK_BYTES):
  """dL/dkernel of `depthwise_multiply_adds`, summed over chunks of images of about `chunk_bytes` of `x` each (a
  `lax.scan`): each chunk's reductions stay in the core's cache, where XLA:CPU's reduction of a whole batch
  runs from memory several times slower."""
  def chunk_gradient(x_chunk, dy_chunk):
    zeros = jnp.zeros(kernel_shape, jnp.float32)
    return jax.vjp(lambda k: depthwise_multiply_adds(x_chunk, k, strides, pads), zeros)[1](
        dy_chunk.astype(jnp.float32))[0]

  chunk = max(1, chunk_bytes // (x[0].size * x.dtype.itemsize))
  return _summed_over_chunks(chunk_gradient, x, output_gradient, chunk, kernel_shape)


def phased_depthwise_backward(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether a depthwise convolution's gradients are `depthwise_input_gradient` and `depthwise_kernel_gradient`
  (the CPU kinds where they measured fastest: CHUNKED_GRADIENT_KINDS) rather than XLA's input gradient one image
  at a time and the multiply-adds' own kernel gradient (other CPUs, measured there before; docs/PERFORMANCE.md)."""
  return tuned_cpu_kind(environ) in CHUNKED_GRADIENT_KINDS


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, kernel, strides, pads):
  """A depthwise convolution in the form fastest on CPUs, pass by pass (docs/PERFORMANCE.md, "Depthwise
  convolutions"): forward as shifted multiply-adds; on AVX2-only CPUs the input gradient phase by phase and the
  kernel gradient per chunk of images (`phased_depthwise_backward`), elsewhere the input gradient XLA's one
  image at a time (the multiply-adds' transpose of a strided slice is slow at stride 2) and the kernel gradient
  the multiply-adds' own."""
  return depthwise_multiply_adds(x, kernel, strides, pads)


def _depthwise_forward(x, kernel, strides, pads):
  return depthwise_multiply_adds(x, kernel, strides, pads), (x, kernel)


def _depthwise_backward(strides, pads, residuals, output_gradient):
  x, kernel = residuals
  if phased_depthwise_backward():
    return (depthwise_input_gradient(output_gradient, kernel, x.shape, strides, pads),
            depthwise_kernel_gradient(x, output_gradient, kernel.shape, strides, pads).astype(kernel.dtype))
  input_gradient = _xla_input_gradient_per_image(x, kernel, output_gradient, strides, pads, x.shape[-1])
  kernel_gradient = jax.vjp(lambda k: depthwise_multiply_adds(x, k, strides, pads), kernel)[1](output_gradient)[0]
  return input_gradient, kernel_gradient


_depthwise.defvjp(_depthwise_forward, _depthwise_backward)


# flax's convolution layer with this module's convolution; parameters and names are nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
