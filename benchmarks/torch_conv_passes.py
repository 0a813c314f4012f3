"""The PyTorch side of `benchmarks/conv_shapes.py --torch_python=...`: each convolution shape's forward pass,
input gradient and weight gradient, each timed alone as ATen runs it (`aten.convolution_backward` with one
output requested: oneDNN's kernels on x86 CPUs). One JSON line per (shape, pass), like the JAX side's.

  python benchmarks/torch_conv_passes.py --shapes='[["stage1", 128, 32, 16, 16, 3, 1, 1]]' --threads=2

Shapes are (name, batch, side, in, out, kernel, stride, groups) with the padding the JAX side uses (k // 2, none
for patches). Tensors are NCHW unless --channels_last. Needs torch; not imported by the package.
"""

import argparse
import json
import time

import torch


def timed_ms(fn, repeats: int) -> tuple[float, float]:
  """(best, median) ms of `repeats` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append((time.perf_counter() - start) * 1e3)
  return min(times), sorted(times)[len(times) // 2]


def measure(shape, repeats: int, channels_last: bool) -> None:
  name, batch, side, inputs, outputs, kernel, stride, groups = shape
  padding = 0 if kernel == stride else kernel // 2
  generator = torch.Generator().manual_seed(0)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  x = torch.randn(batch, inputs, side, side, generator=generator).contiguous(memory_format=memory_format)
  w = (torch.randn(outputs, inputs // groups, kernel, kernel, generator=generator) * 0.1).contiguous(
      memory_format=memory_format)
  with torch.no_grad():
    y = torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=groups)
  dy = torch.randn(y.shape, generator=generator).contiguous(memory_format=memory_format)
  flops = 2 * y.numel() * kernel * kernel * inputs // groups

  def backward(mask):
    return torch.ops.aten.convolution_backward(dy, x, w, None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0],
                                               groups, mask)

  passes = {'forward': lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=groups),
            'input_gradient': lambda: backward([True, False, False]),
            'weight_gradient': lambda: backward([False, True, False])}
  with torch.no_grad():
    for kind, fn in passes.items():
      best, median = timed_ms(fn, repeats)
      print(json.dumps({'framework': 'pytorch', 'shape': name, 'pass': kind, 'channels_last': channels_last,
                        'ms_best': round(best, 2), 'ms_median': round(median, 2),
                        'gflops_median': round(flops / median / 1e6, 1)}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--shapes', required=True, help='a JSON list of (name, batch, side, in, out, kernel, stride, '
                                                      'groups)')
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--threads', type=int, default=0, help="CPU threads (0: PyTorch's default)")
  parser.add_argument('--channels_last', action='store_true')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  for shape in json.loads(args.shapes):
    measure(shape, args.repeats, args.channels_last)


if __name__ == '__main__':
  main()
