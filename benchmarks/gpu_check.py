"""What a GPU user cares about, in one call of a few minutes: `benchmarks/gpu_check.sh` runs this.

Writes one JSON line per figure to --out: the device and versions; the JAX training steps (ResNet-32 at 32x32,
batch 128 and 512; ResNet-50 and ResNeXt-50 at 224x224, batch 128; float32 and bfloat16: compile time apart,
best of blocks, images/s, achieved FLOP/s against the chip's peak, from `launch/benchmark.py`); the same steps in
PyTorch on the same device (`benchmarks/torch_step.py`: torchvision's networks, channels-last, bfloat16
autocast, eager, and `torch.compile` for one of them) and each JAX/PyTorch ratio; stage 2 on cached features
with the default grid's 144 heads; the quickstart end to end (wall time and its table's figures); a full
CIFAR-100-LT schedule's wall time estimated from the measured step. Every part runs in its own process with a
time limit; a part that fails or does not fit the time is a line saying so, and the others still run.

--cpu runs the same parts at toy sizes (ResNet-8 for ResNet-32, a 32-pixel ResNet-10 for the ImageNet networks,
the quickstart at one epoch on 311 images) so that the script itself is tested on a CPU in minutes; its figures
mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml-collections', 'numpy', 'torch',
             'torchvision', 'tensorflow', 'tensorflow-datasets')  # reported with the device
# (model, batch, image size) of the JAX and PyTorch steps; --cpu: toy sizes.
GPU_STEPS = (('resnet32', 128, 32), ('resnet32', 512, 32), ('resnet50', 128, 224), ('resnext50', 128, 224))
CPU_STEPS = (('resnet8', 16, 32), ('resnet10', 2, 32))
TORCH_CPU_STEPS = (('resnet32', 16, 32),)
QUICKSTART_CPU = ('--config.data.imbalance_factor=10', '--config.data.max_count=40', '--config.naive.epochs=1',
                  '--config.stage1.epochs=1', '--config.stage2.grid.learning_rate=(0.1,)',
                  '--config.stage2.grid.epochs=(2,)', '--config.stage2.grid.weight_decay=(5e-4,)',
                  '--config.stage2.grid.alpha=(0.1,0.5)')


class Report:
  """The JSON lines file, each line also printed; `deadline` bounds the whole check."""

  def __init__(self, path: str, budget_s: float):
    self.path, self.deadline = path, time.monotonic() + budget_s
    open(path, 'w').close()

  def write(self, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(self.path, 'a') as f:
      f.write(line + '\n')

  def left_s(self) -> float:
    return self.deadline - time.monotonic()

  def run(self, part: str, command: list[str], limit_s: float, env=None) -> list[dict]:
    """Run `command`; every JSON line it prints is written with `part`; a failure or timeout is one line."""
    limit_s = min(limit_s, self.left_s())
    if limit_s < 10:
      self.write({'part': part, 'skipped': 'no time left in the budget', 'command': ' '.join(command)})
      return []
    start = time.monotonic()
    try:
      done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as expired:
      tail = expired.stderr or ''  # bytes even with text=True, on a timeout
      tail = tail.decode(errors='replace') if isinstance(tail, bytes) else tail
      self.write({'part': part, 'error': f'timed out after {limit_s:.0f} s', 'command': ' '.join(command),
                  'output_tail': tail[-800:]})
      return []
    records = []
    for line in done.stdout.splitlines():
      if line.startswith('{'):
        records.append({'part': part, **json.loads(line)})
        self.write(records[-1])
    if done.returncode:
      self.write({'part': part, 'error': f'exit {done.returncode}', 'command': ' '.join(command),
                  'wall_s': round(time.monotonic() - start, 1), 'output_tail': done.stderr[-800:]})
    return records


def device_record() -> dict:
  """Printed by a child process (`--device_only`): this process never starts JAX, so the GPU's memory is left
  to the measured processes."""
  import jax
  device = jax.devices()[0]
  from bwlm_jax.fingerprint import versions
  record = {'backend': jax.default_backend(), 'device': device.device_kind, 'devices': jax.device_count(),
            'machine': platform.machine(), 'versions': versions(LIBRARIES)}
  try:
    record['memory_bytes'] = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # noqa: BLE001  (not every backend reports memory)
    record['memory_bytes'] = None
  return record


def jax_steps(report: Report, cpu: bool, measured: list[dict]) -> list[dict]:
  """The JAX training steps of launch/benchmark.py, one process per (model, batch) not `measured` already."""
  python, records = sys.executable, []
  done = {(r['model'], r['batch']) for r in measured if r.get('measurement') == 'stage1_train'}
  for model, batch, size in (CPU_STEPS if cpu else GPU_STEPS):
    if (model, batch) in done:
      continue
    small = size == 32
    command = [python, 'launch/benchmark.py', f'--models={model}', f'--batch={batch}', f'--image_size={size}',
               '--dtypes=float32' if cpu else '--dtypes=float32,bfloat16', '--torch_python=none',
               '--real_data=false', '--stage2=false', '--train_224=true']
    if cpu:
      command += ['--steps=2', '--blocks=1']
    elif not small:
      command += ['--steps=5', '--blocks=3']
    records += report.run('jax_steps', command, 150 if cpu else 240)
  return records


def stage2_and_estimate(report: Report, cpu: bool) -> list[dict]:
  """Stage 2 on cached features with the default grid's 144 heads (ResNet-32 at the CIFAR-100-LT config's batch),
  and the stage-1 step the schedule estimate is made from (--cpu: ResNet-8, 4 heads)."""
  batch = 16 if cpu else 64
  command = [sys.executable, 'launch/benchmark.py', f'--models={"resnet8" if cpu else "resnet32"}', f'--batch={batch}',
             '--dtypes=float32',
             '--torch_python=none', f'--heads={4 if cpu else 144}', '--real_data=true']
  if cpu:
    command += ['--steps=2', '--blocks=1']
  return report.run('stage2', command, 150 if cpu else 240)


def torch_steps(report: Report, cpu: bool) -> list[dict]:
  try:
    importlib.metadata.version('torch')
  except importlib.metadata.PackageNotFoundError:
    report.write({'part': 'pytorch_steps', 'skipped': 'torch is not installed in this Python'})
    return []
  device = 'cpu' if cpu else 'cuda'
  records = []
  for model, batch, size in (TORCH_CPU_STEPS if cpu else GPU_STEPS):
    for dtype in (('float32',) if cpu else ('float32', 'bfloat16')):
      command = [sys.executable, 'benchmarks/torch_step.py', f'--model={model}', f'--batch={batch}',
                 f'--image_size={size}', f'--dtype={dtype}', f'--device={device}', '--channels_last',
                 '--classes=100' if size == 32 else '--classes=1000']
      command += ['--steps=2', '--blocks=1'] if cpu else (['--steps=5', '--blocks=3'] if size > 32 else [])
      records += report.run('pytorch_steps', command, 120 if cpu else 180)
  if not cpu:  # torch.compile where it fits: the bfloat16 ResNet-50 step
    records += report.run('pytorch_steps', [sys.executable, 'benchmarks/torch_step.py', '--model=resnet50',
                                            '--batch=128', '--image_size=224', '--dtype=bfloat16', '--device=cuda',
                                            '--channels_last', '--compile', '--classes=1000', '--steps=5'], 240)
  return records


def ratios(report: Report, jax_records: list[dict], torch_records: list[dict]) -> None:
  """JAX / PyTorch images/s for each (model, batch, dtype) measured by both (PyTorch's fastest variant)."""
  fastest = {}
  for record in torch_records:
    key = (record['model'], record['batch'], record['dtype'])
    fastest[key] = max(fastest.get(key, 0.0), record['images_per_s'])
  for record in jax_records:
    key = (record.get('model'), record.get('batch'), record.get('dtype'))
    if record.get('measurement') == 'stage1_train' and key in fastest:
      report.write({'part': 'ratio', 'model': key[0], 'batch': key[1], 'dtype': key[2],
                    'jax_images_per_s': record['images_per_s'], 'pytorch_images_per_s': fastest[key],
                    'jax_over_pytorch': round(record['images_per_s'] / fastest[key], 3)})


def quickstart(report: Report, cpu: bool) -> None:
  """launch/train.py --config=configs/quickstart.py end to end: wall time and the README table's figures."""
  workdir = tempfile.mkdtemp(prefix='gpu-check-quickstart-')
  start = time.monotonic()
  report.run('quickstart', [sys.executable, 'launch/train.py', '--config=configs/quickstart.py',
                            f'--workdir={workdir}', *(QUICKSTART_CPU if cpu else ())], 240 if cpu else 300)
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return
  models = json.load(open(path))['models']
  report.write({'part': 'quickstart', 'wall_s': round(time.monotonic() - start, 1), 'schedule': 'toy' if cpu else
                'the config', **{f'{model}_test': {group: models[model]['test'][group] for group in
                                                   ('many', 'medium', 'few', 'all')} for model in models}})


def cifar100_estimate(report: Report, stage2_records: list[dict]) -> None:
  """The CIFAR-100-LT config's schedule (IF 100: 10,847 images) from the measured ResNet-32 steps."""
  sys.path.insert(0, ROOT)
  from bwlm_jax.data.long_tail import balanced_review_counts, long_tail_counts
  from configs.cifar100_lt import get_config
  config = get_config('100')
  counts = long_tail_counts(100, 500, 100.0)
  stage1, review = (int(c.sum()) for c in balanced_review_counts(counts))
  step = {r['measurement']: r for r in stage2_records}
  if 'stage1_train' not in step:
    report.write({'part': 'cifar100_lt_estimate', 'skipped': 'the ResNet-32 step was not measured'})
    return
  per_image = step['stage1_train']['step_s'] / step['stage1_train']['batch']
  backbone_s = per_image * (int(counts.sum()) * config.naive.epochs + stage1 * config.stage1.epochs)
  heads = step.get('stage2_sweep_144_heads_cached') or step.get('stage2_sweep_4_heads_cached')
  longest = max(config.stage2.grid.epochs)
  heads_s = heads['step_s'] * math.ceil(review / heads['batch']) * longest if heads else None
  report.write({'part': 'cifar100_lt_estimate', 'train_images': int(counts.sum()), 'stage1_images': stage1,
                'stage2_images': review, 'naive_epochs': config.naive.epochs, 'stage1_epochs': config.stage1.epochs,
                'measured_batch': step['stage1_train']['batch'], 'backbones_s': round(backbone_s, 1),
                'stage2_grid_s': round(heads_s, 1) if heads_s else None,
                'estimated_s': round(backbone_s + (heads_s or 0.0), 1)})


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='The JSON lines file to write.')
  parser.add_argument('--cpu', action='store_true', help='Toy sizes on a CPU (tests the script).')
  parser.add_argument('--budget_s', type=float, default=460.0, help='Time for the whole check.')
  parser.add_argument('--device_only', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.device_only:
    print(json.dumps(device_record()))
    return
  report = Report(args.out, args.budget_s)
  report.run('device', [sys.executable, os.path.abspath(__file__), '--out=-', '--device_only'], 120)
  stage2 = stage2_and_estimate(report, args.cpu)
  cifar100_estimate(report, stage2)
  quickstart(report, args.cpu)
  jax_records = jax_steps(report, args.cpu, stage2) + stage2
  ratios(report, jax_records, torch_steps(report, args.cpu))
  report.write({'part': 'done', 'left_s': round(report.left_s(), 1)})


if __name__ == '__main__':
  main()
