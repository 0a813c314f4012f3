"""Where a CPU training step's convolution time goes: forward, input gradient and weight gradient of each
convolution shape of ResNet-32 (NHWC / HWIO, batch 128; `--shapes=resnet18`: ResNet-18's at 224x224, batch 32;
`--shapes=imagenet`: the 224x224 networks' kinds, batch 16), each jitted alone; one JSON line per (shape, pass)
with ms (best and median) and GFLOP/s. Each pass as XLA computes it and as the models take it
(`bwlm_jax.models.conv.conv_general_dilated`, `*_as_models`); the weight gradient also chunked (chunks of images,
each a forward convolution) and, for 3x3 kernels, as nine matrix products (one per kernel offset: the formulation
issue 30 names), each with its difference to XLA's. With --torch_python, PyTorch's passes of the same shapes
(benchmarks/torch_conv_passes.py, its own process) and the ratio of each pass the models take to PyTorch's.

  python benchmarks/conv_shapes.py                      # the launch scripts' CPU settings (YNNPACK flag, malloc)
  python benchmarks/conv_shapes.py --shapes=resnet18 --cpu_runtime=hugepages --torch_python=VENV/bin/python
  python benchmarks/conv_shapes.py --max_isa=AVX2       # XLA's own code restricted to AVX2 (an emulation: YNNPACK
                                                        # still picks its kernels by the CPU it finds)

Name the CPU (`lscpu`: avx2, avx512f) next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, batch, image side, input channels, output channels, kernel, stride, groups).
# ResNet-32's convolutions (bwlm_jax.models.resnet_cifar), at the training batch:
CIFAR_SHAPES = (('stem', 128, 32, 3, 16, 3, 1, 1), ('stage1', 128, 32, 16, 16, 3, 1, 1),
                ('stage2_down', 128, 32, 16, 32, 3, 2, 1), ('stage2', 128, 16, 32, 32, 3, 1, 1),
                ('stage3_down', 128, 16, 32, 64, 3, 2, 1), ('stage3', 128, 8, 64, 64, 3, 1, 1))
# The 224x224 networks' kinds of convolution (ResNet-50, ResNeXt-50 32x4d, EfficientNet-Lite0, ViT-B/16), batch 16:
IMAGENET_SHAPES = (('resnet50_stem', 16, 224, 3, 64, 7, 2, 1), ('resnet50_layer1_3x3', 16, 56, 64, 64, 3, 1, 1),
                   ('resnet50_layer1_1x1', 16, 56, 64, 256, 1, 1, 1), ('resnet50_layer2_3x3_down', 16, 56, 128, 128, 3, 2, 1),
                   ('resnext50_layer1_grouped', 16, 56, 128, 128, 3, 1, 32),
                   ('efficientnet_depthwise', 16, 112, 96, 96, 3, 2, 96), ('vit_b16_patches', 16, 224, 3, 768, 16, 16, 1))
# ResNet-18's convolutions (bwlm_jax.models.resnet_imagenet) at 224x224, the family comparison's batch of 32:
RESNET18_SHAPES = (('r18_stem', 32, 224, 3, 64, 7, 2, 1), ('r18_layer1', 32, 56, 64, 64, 3, 1, 1),
                   ('r18_layer2_down', 32, 56, 64, 128, 3, 2, 1), ('r18_layer2_shortcut', 32, 56, 64, 128, 1, 2, 1),
                   ('r18_layer2', 32, 28, 128, 128, 3, 1, 1), ('r18_layer3_down', 32, 28, 128, 256, 3, 2, 1),
                   ('r18_layer3_shortcut', 32, 28, 128, 256, 1, 2, 1), ('r18_layer3', 32, 14, 256, 256, 3, 1, 1),
                   ('r18_layer4_down', 32, 14, 256, 512, 3, 2, 1), ('r18_layer4_shortcut', 32, 14, 256, 512, 1, 2, 1),
                   ('r18_layer4', 32, 7, 512, 512, 3, 1, 1))
# EfficientNet-Lite0's depthwise convolutions at 64x64 inputs, batch 64 (the LP-FT setting of issue 47), and the
# issue's [64, 32, 32, 96] 3x3: XLA's against the shifted multiply-adds bwlm_jax.models.conv takes on CPUs.
DEPTHWISE_SHAPES = (('lite0_dw32_k3', 64, 32, 32, 32, 3, 1, 32), ('issue47_dw96_k3', 64, 32, 96, 96, 3, 1, 96),
                    ('lite0_dw96_k3_s2', 64, 32, 96, 96, 3, 2, 96), ('lite0_dw144_k3', 64, 16, 144, 144, 3, 1, 144),
                    ('lite0_dw144_k5_s2', 64, 16, 144, 144, 5, 2, 144), ('lite0_dw240_k5', 64, 8, 240, 240, 5, 1, 240),
                    ('lite0_dw480_k3', 64, 4, 480, 480, 3, 1, 480), ('lite0_dw672_k5', 64, 4, 672, 672, 5, 1, 672),
                    ('lite0_dw1152_k5', 64, 2, 1152, 1152, 5, 1, 1152))


def _timed_ms(fn, args, repeats: int) -> tuple[float, float]:
  """(best, median) ms of `repeats` calls after one warm-up call."""
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - start) * 1e3)
  return min(times), sorted(times)[len(times) // 2]


def _pads(kernel: int, stride: int) -> tuple:
  """The models' padding: k // 2 on each side (the ResNets'), none for the ViT's patches."""
  if kernel == stride:
    return ((0, 0), (0, 0))
  return ((kernel // 2, kernel // 2),) * 2


def nine_products_weight_gradient(x, dy, stride: int, pads):
  """dL/dW of a 3x3 convolution as one [C, O] product per kernel offset (the formulation issue 30 names)."""
  import jax.numpy as jnp
  _, height, width, _ = dy.shape
  padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  rows = []
  for i in range(3):
    row = []
    for j in range(3):
      shifted = padded[:, i:i + stride * (height - 1) + 1:stride, j:j + stride * (width - 1) + 1:stride, :]
      row.append(shifted.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1]))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


def measure(shapes, repeats: int) -> dict:
  """Print each shape's passes; return the median ms of those the models take, by (shape, pass)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from bwlm_jax.models import conv as conv_module

  rng = np.random.default_rng(0)
  models_ms = {}
  for name, batch, side, inputs, outputs, kernel, stride, groups in shapes:
    pads = _pads(kernel, stride)

    def conv(x, w):
      return jax.lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                          feature_group_count=groups)

    x = jnp.asarray(rng.normal(size=(batch, side, side, inputs)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, inputs // groups, outputs)) * 0.1, jnp.float32)
    y = conv(x, w)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    flops = 2 * y.size * kernel * kernel * inputs // groups
    def as_models(x, w):
      return conv_module.conv_general_dilated(x, w, (stride, stride), pads,
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)

    passes = {
        'forward': (jax.jit(conv), (x, w)),
        'forward_as_models': (jax.jit(as_models), (x, w)),
        'input_gradient_as_models': (jax.jit(lambda x, w, dy: jax.vjp(lambda x: as_models(x, w), x)[1](dy)[0]),
                                     (x, w, dy)),
        'weight_gradient_as_models': (jax.jit(lambda x, w, dy: jax.vjp(lambda w: as_models(x, w), w)[1](dy)[0]),
                                      (x, w, dy)),
        'input_gradient': (jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]), (x, w, dy)),
        'weight_gradient': (jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]), (x, w, dy)),
        'weight_gradient_chunked': (jax.jit(lambda x, dy: conv_module.weight_gradient(
            x, dy, w.shape, (stride, stride), pads, groups)), (x, dy)),
    }
    if 1 < groups < inputs:  # grouped: the diagonal blocks of the dense gradient, chunked and from XLA's
      for chunked in (True, False):
        passes[f'weight_gradient_dense_blocks{"_chunked" if chunked else ""}'] = (jax.jit(
            lambda x, dy, chunked=chunked: conv_module.grouped_weight_gradient(
                x, dy, w.shape, (stride, stride), pads, groups, chunked)), (x, dy))
    if groups == inputs > 1:  # depthwise: as shifted multiply-adds (bwlm_jax.models.conv on CPUs), each pass
      def shifted(x, w):
        return conv_module.depthwise_multiply_adds(x, w, (stride, stride), pads)
      passes['forward_shifted'] = (jax.jit(shifted), (x, w))
      passes['input_gradient_shifted'] = (jax.jit(lambda x, w, dy: jax.vjp(lambda x: shifted(x, w), x)[1](dy)[0]),
                                          (x, w, dy))
      passes['weight_gradient_shifted'] = (jax.jit(lambda x, w, dy: jax.vjp(lambda w: shifted(x, w), w)[1](dy)[0]),
                                           (x, w, dy))
      passes['input_gradient_phased'] = (jax.jit(lambda w, dy: conv_module.depthwise_input_gradient(
          dy, w, x.shape, (stride, stride), pads)), (w, dy))
      passes['weight_gradient_shifted_per_chunk'] = (jax.jit(lambda x, dy: conv_module.depthwise_kernel_gradient(
          x, dy, w.shape, (stride, stride), pads)), (x, dy))
    if groups == inputs:  # depthwise: the input gradient as bwlm_jax.models.conv takes it on AVX2-only CPUs
      passes['input_gradient_per_image'] = (jax.jit(lambda x, w, dy: jax.lax.map(
          lambda pair: jax.vjp(lambda x: conv(x, w), pair[0][None])[1](pair[1][None])[0][0], (x, dy))), (x, w, dy))
    if kernel == 3 and groups == 1:
      passes['weight_gradient_nine_products'] = (jax.jit(lambda x, dy: nine_products_weight_gradient(
          x, dy, stride, pads)), (x, dy))
    reference = passes['weight_gradient'][0](x, w, dy)
    for kind, (fn, args) in passes.items():
      best, median = _timed_ms(fn, args, repeats)
      record = {'shape': name, 'batch': batch, 'side': side, 'in': inputs, 'out': outputs, 'kernel': kernel,
                'stride': stride, 'groups': groups, 'pass': kind, 'ms_best': round(best, 2),
                'ms_median': round(median, 2), 'gflops_median': round(flops / median / 1e6, 1)}
      base = next(b for b in ('forward', 'input_gradient', 'weight_gradient') if kind.startswith(b))
      if kind != base:  # another way to compute XLA's pass: its difference to it
        expected = {'forward': lambda: passes['forward'][0](x, w), 'weight_gradient': lambda: reference,
                    'input_gradient': lambda: passes['input_gradient'][0](x, w, dy)}[base]()
        record['max_relative_difference_to_xla'] = float(jnp.max(jnp.abs(fn(*args) - expected)) /
                                                         jnp.max(jnp.abs(expected)))
      print(json.dumps(record), flush=True)
      if kind.endswith('_as_models'):
        models_ms[name, kind.removesuffix('_as_models')] = median
  return models_ms


def compare_with_torch(shapes, models_ms: dict, python: str, repeats: int, threads: int, channels_last: bool):
  """PyTorch's passes of `shapes` (its own process), and each pass's speed as the models take it over PyTorch's."""
  script = os.path.join(ROOT, 'benchmarks', 'torch_conv_passes.py')
  env = {key: value for key, value in os.environ.items() if key != 'GLIBC_TUNABLES'}  # PyTorch's own malloc use
  command = [python, script, f'--shapes={json.dumps(shapes)}', f'--repeats={repeats}', f'--threads={threads}']
  done = subprocess.run(command + (['--channels_last'] if channels_last else []), capture_output=True, text=True,
                        env=env)
  if done.returncode:
    sys.exit(f'error: --torch_python={python}: the PyTorch passes failed: {done.stderr.strip()[-300:]}')
  totals = {'jax_ms': 0.0, 'pytorch_ms': 0.0}
  for line in done.stdout.strip().splitlines():
    record = json.loads(line)
    print(line, flush=True)
    jax_ms = models_ms[record['shape'], record['pass']]
    totals['jax_ms'] += jax_ms
    totals['pytorch_ms'] += record['ms_median']
    print(json.dumps({'shape': record['shape'], 'pass': record['pass'], 'jax_ms_median': round(jax_ms, 2),
                      'pytorch_ms_median': record['ms_median'],
                      'jax_speed_over_pytorch': round(record['ms_median'] / jax_ms, 3)}), flush=True)
  print(json.dumps({'all_shapes_and_passes': {key: round(value, 1) for key, value in totals.items()},
                    'jax_speed_over_pytorch': round(totals['pytorch_ms'] / totals['jax_ms'], 3)}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--shapes', default='cifar', choices=('cifar', 'resnet18', 'imagenet', 'depthwise', 'all'),
                      help="ResNet-32's convolutions, ResNet-18's, the 224x224 networks' kinds, EfficientNet-Lite0's "
                           'depthwise ones at 64x64, or all')
  parser.add_argument('--max_isa', default=None, help="XLA's --xla_cpu_max_isa (e.g. AVX2)")
  parser.add_argument('--cpu_runtime', default=None,
                      help="the CPU settings to run with (process_setup.CPU_RUNTIMES; default: the launch scripts' "
                           'settings where no model is known)')
  parser.add_argument('--torch_python', default=None, help='a Python with PyTorch: its passes of the same shapes')
  parser.add_argument('--torch_threads', type=int, default=2, help="PyTorch's CPU threads (the cores JAX uses here)")
  parser.add_argument('--torch_channels_last', action='store_true', help="PyTorch's tensors channels-last")
  args = parser.parse_args()
  if args.max_isa and f'--xla_cpu_max_isa={args.max_isa}' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_cpu_max_isa={args.max_isa}'.strip()
  sys.path.insert(0, ROOT)
  from bwlm_jax.runtime import process_setup
  runtime = args.cpu_runtime or process_setup.DEFAULT_CPU_RUNTIME
  if runtime not in process_setup.CPU_RUNTIMES:
    sys.exit(f'error: --cpu_runtime={runtime}: expected one of {sorted(process_setup.CPU_RUNTIMES)}')
  process_setup.start_process(family_runtime=runtime)  # the CPU settings (it restarts this process once with them)
  from bwlm_jax.models import conv
  print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''), 'cpu_kind': conv.cpu_kind(),
                    'cpu_runtime': process_setup.cpu_runtime(runtime)}), flush=True)
  shapes = {'cifar': CIFAR_SHAPES, 'resnet18': RESNET18_SHAPES, 'imagenet': IMAGENET_SHAPES,
            'depthwise': DEPTHWISE_SHAPES,
            'all': CIFAR_SHAPES + RESNET18_SHAPES + IMAGENET_SHAPES + DEPTHWISE_SHAPES}[args.shapes]
  models_ms = measure(shapes, args.repeats)
  if args.torch_python:
    compare_with_torch(shapes, models_ms, args.torch_python, args.repeats, args.torch_threads,
                       args.torch_channels_last)


if __name__ == '__main__':
  main()
