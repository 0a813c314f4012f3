"""Where a CPU training step's convolution time goes: forward, input gradient and weight gradient of every
convolution shape of ResNet-32 (NHWC / HWIO, 3x3, batch 128), each jitted alone; one JSON line per
(shape, pass) with ms and GFLOP/s, and the weight gradient also as nine matrix products (one per kernel
offset: the formulation issue 30 names) for comparison.

  python benchmarks/conv_shapes.py                      # the launch scripts' CPU settings (YNNPACK flag, malloc)
  python benchmarks/conv_shapes.py --max_isa=AVX2       # XLA's own code restricted to AVX2 (an emulation: YNNPACK
                                                        # still picks its kernels by the CPU it finds)

Name the CPU (`lscpu`: avx2, avx512f) next to every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, image side, input channels, output channels, stride): ResNet-32's convolutions (bwlm_jax.models.resnet_cifar).
SHAPES = (('stem', 32, 3, 16, 1), ('stage1', 32, 16, 16, 1), ('stage2_down', 32, 16, 32, 2),
          ('stage2', 16, 32, 32, 1), ('stage3_down', 16, 32, 64, 2), ('stage3', 8, 64, 64, 1))


def _best_ms(fn, args, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn(*args))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best * 1e3


def _padding(stride: int) -> tuple:
  """XLA's and Flax's 'SAME' padding of a 3x3 kernel on an even side: (1, 1) at stride 1, (0, 1) at stride 2."""
  return (1, 1) if stride == 1 else (0, 1)


def nine_products_weight_gradient(x, dy, stride: int):
  """dL/dW of a 3x3 'SAME' convolution as one [C, O] product per kernel offset."""
  import jax.numpy as jnp
  _, height, width, _ = dy.shape
  padded = jnp.pad(x, ((0, 0), _padding(stride), _padding(stride), (0, 0)))
  rows = []
  for i in range(3):
    row = []
    for j in range(3):
      shifted = padded[:, i:i + stride * height:stride, j:j + stride * width:stride, :]
      row.append(shifted.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1]))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


def measure(batch: int, repeats: int) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  def conv(x, w, stride):
    padding = (_padding(stride), _padding(stride))
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  rng = np.random.default_rng(0)
  for name, side, inputs, outputs, stride in SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, side, side, inputs)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, inputs, outputs)) * 0.1, jnp.float32)
    y, vjp = jax.vjp(lambda x, w: conv(x, w, stride), x, w)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    flops = 2 * batch * y.shape[1] * y.shape[2] * inputs * outputs * 9
    passes = {
        'forward': (jax.jit(lambda x, w: conv(x, w, stride)), (x, w)),
        'input_gradient': (jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w, stride), x)[1](dy)[0]), (x, w, dy)),
        'weight_gradient': (jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w, stride), w)[1](dy)[0]), (x, w, dy)),
        'weight_gradient_nine_products': (jax.jit(lambda x, dy: nine_products_weight_gradient(x, dy, stride)), (x, dy)),
    }
    reference = passes['weight_gradient'][0](x, w, dy)
    for kind, (fn, args) in passes.items():
      ms = _best_ms(fn, args, repeats)
      record = {'shape': name, 'side': side, 'in': inputs, 'out': outputs, 'stride': stride, 'batch': batch,
                'pass': kind, 'ms': round(ms, 2), 'gflops': round(flops / ms / 1e6, 1)}
      if kind == 'weight_gradient_nine_products':
        record['max_difference_to_xla'] = float(jnp.max(jnp.abs(fn(*args) - reference)))
      print(json.dumps(record), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--max_isa', default=None, help="XLA's --xla_cpu_max_isa (e.g. AVX2)")
  args = parser.parse_args()
  if args.max_isa and f'--xla_cpu_max_isa={args.max_isa}' not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --xla_cpu_max_isa={args.max_isa}'.strip()
  sys.path.insert(0, ROOT)
  from bwlm_jax import process_setup
  process_setup.start_process()  # the launch scripts' CPU settings (it restarts this process once with them)
  print(json.dumps({'xla_flags': os.environ.get('XLA_FLAGS', ''), 'cpu_flags_avx512f': _has('avx512f'),
                    'cpu_flags_avx2': _has('avx2')}), flush=True)
  measure(args.batch, args.repeats)


def _has(flag: str) -> bool:
  try:
    return f' {flag} ' in open('/proc/cpuinfo').read().replace('\n', ' ')
  except OSError:
    return False


if __name__ == '__main__':
  main()
