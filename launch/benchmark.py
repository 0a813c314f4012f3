"""Throughput and memory benchmarks on synthetic inputs (no dataset needed); one JSON object per measurement.

  python launch/benchmark.py --models=efficientnet_lite0,vit_small_patch16 --image_size=64 --batch=64 \
      --torch_python=/path/to/venv-with-torch/bin/python
                                        # any model.name: the full training step and the evaluation forward
                                        # pass, each in a process of its own (its peak resident memory), then
                                        # the reference PyTorch class's (torchvision, timm, efficientnet-lite-
                                        # pytorch) in the same run, and the JAX / PyTorch ratios

  python launch/benchmark.py            # ResNet-32 (batch 128, 32x32): every measurement, float32 and bfloat16;
                                        # ResNeXt-50 (batch 64, 224x224): on a CPU its forward pass in float32 only,
                                        # on an accelerator every measurement in both dtypes
  python launch/benchmark.py --models=resnext50 --dtypes=float32,bfloat16 --blocks=3 --steps=5
  python launch/benchmark.py --models=resnet32 --dtypes=float32 --torch_python=/path/to/venv-with-torch/bin/python
                                        # then the same ResNet-32 step in plain PyTorch, back to back

Each measurement: compile time (s), then the best of --blocks timed blocks of --steps steps after one
warm-up step (single steps can stall for seconds on shared CPUs); images/s; XLA's FLOP count per step
and the achieved fraction of the device's peak where the peak is known.
"""

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

from bwlm_jax.runtime import cli, process_setup

_MODELS = flags.DEFINE_list('models', ['resnet32', 'resnext50'], 'Backbones to measure.')
_DTYPES = flags.DEFINE_list('dtypes', None, 'Compute dtypes (default float32,bfloat16; ResNeXt/ResNet-50 on a '
                            'CPU: float32 only, to stay within minutes).')
_TRAIN_224 = flags.DEFINE_bool('train_224', None, 'Time training steps of the 224x224 models too (default: on an '
                                'accelerator only; on 2 CPU cores one ResNeXt-50 training step at batch 64 takes minutes, '
                                'its forward pass 14 s).')
_REAL_DATA = flags.DEFINE_bool('real_data', True, 'Also time the stage-1 step on the embedded dataset (real images '
                               'through the same device pipeline) to compare with synthetic inputs.')
_BLOCKS = flags.DEFINE_integer('blocks', 3, 'Timed blocks per measurement (the best is reported).')
_STEPS = flags.DEFINE_integer('steps', None, 'Steps per block (default: 10 for 32x32 models, 2 for 224x224).')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', None, 'A Python with PyTorch: after the JAX measurements, time the same ResNet-32 training step '
    'in plain PyTorch (benchmarks/torch_step.py, on the GPU when JAX runs on one) and print the JAX/PyTorch '
    'ratio. Default: this Python when it has torch, else skipped; "none" skips it.')
_HEADS = flags.DEFINE_integer('heads', 11, 'Heads of the vectorised sweep (the 11-point alpha sweep; 144: the '
                               'default stage-2 grid).')
_BATCH = flags.DEFINE_integer('batch', None, 'Batch size (default: 128 for 32x32 models, 64 for 224x224).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, 'Image side (default: 32, or 224 for the ImageNet networks).')
_BACKBONES = flags.DEFINE_integer('backbones', 2, 'K of the stacked backbone step (recipe.backbones_at_once: K '
                                  'backbones in one vmapped step; its images/s counts each model\'s images); below 2: '
                                  'not timed.')
_STAGE2 = flags.DEFINE_bool('stage2', True, 'Also time stage 2 (uncached, cached, the sweep of --heads heads) and '
                            'the evaluation forward pass after each training step.')
_SHAPES = {'resnet32': (128, 32, 100), 'resnet8': (128, 32, 100), 'resnext50': (64, 224, 1000),
           'resnet50': (64, 224, 1000), 'resnet10': (64, 224, 1000)}
FAMILY_SHAPE = (64, 64, 1000)  # every other model.name: batch, side, classes (the LP-FT setting)
_FAMILY_COMPARISON = flags.DEFINE_bool(
    'family_comparison', None, 'Time the training step and the evaluation forward pass each in a process of its '
    'own, then the reference PyTorch class\'s (--torch_python), and print the ratios. Default: for every model '
    'without a benchmark shape of its own (all but resnet8/10/32/50 and resnext50, which take the stage-1 / '
    'stage-2 / evaluation measurements unless this is set).')
_ONLY = flags.DEFINE_enum('only', None, ['train', 'eval'], 'Internal: measure one model\'s training step or '
                          'evaluation forward pass in this process (the parent reads its peak memory).')
_THREADS = flags.DEFINE_integer('torch_threads', 2, 'PyTorch\'s CPU threads in the family comparison (the cores '
                                'JAX uses here).')
_RUNTIME = []  # the CPU settings this process runs with (process_setup.CPU_RUNTIMES), recorded in each figure
# Dense peak FLOP/s by device kind and dtype (vendor figures, without sparsity).
PEAK_FLOPS = {('NVIDIA H100 80GB HBM3', 'bfloat16'): 989e12, ('NVIDIA H100 80GB HBM3', 'float32'): 67e12,
              ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 67e12}


def _peak_rss_mb() -> int:
  """This process's peak resident memory since it started (the kernel's VmHWM: ru_maxrss would carry the memory of
  a parent it was forked from), else ru_maxrss."""
  try:
    with open('/proc/self/status') as status:
      return round(next(int(line.split()[1]) for line in status if line.startswith('VmHWM:')) / 1024)
  except (OSError, StopIteration):
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def measure(name, jitted, state, args, images_per_step, steps, blocks, extra):
  """Compile, warm up, then time `blocks` blocks of `steps` chained steps; print and return the record."""
  import jax
  start = time.perf_counter()
  compiled = jitted.lower(state, *args).compile()
  compile_s = time.perf_counter() - start
  state, _ = compiled(state, *args)
  jax.block_until_ready(state)
  best = float('inf')
  for _ in range(blocks):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, *args)
    jax.block_until_ready((state, metrics))
    best = min(best, (time.perf_counter() - start) / steps)
  device = jax.devices()[0]
  flops = _flops(compiled)
  peak = PEAK_FLOPS.get((device.device_kind, extra['dtype']))
  record = {'measurement': name, **extra, 'device': device.device_kind, 'devices': jax.device_count(),
            'cpu_runtime': _RUNTIME[0] if _RUNTIME else None,
            'compile_s': round(compile_s, 2), 'step_s': round(best, 5),
            'images_per_s': round(images_per_step / best, 1),
            'peak_rss_mb': _peak_rss_mb(),  # this process's so far
            'flops_per_step': flops, 'peak_fraction': round(flops / best / peak, 4) if flops and peak else None}
  print(json.dumps(record), flush=True)
  return record, state


def run_model(model_name: str, dtype: str, steps: int, blocks: int, heads: int, real_data: bool, train: bool,
              shape: tuple, stage2: bool = True, backbones: int = 0):
  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np
  from bwlm_jax.runtime import distributed
  from bwlm_jax.config import base_config
  from bwlm_jax.losses import cross_entropy
  from bwlm_jax.data.sampling import BatchSpec
  from bwlm_jax.models import DTYPES, build_model, make_features_fn
  from bwlm_jax.train import optim
  from bwlm_jax.train.state import TrainState
  from bwlm_jax.head_setting import HeadSetting
  from bwlm_jax.train.steps import HeadsFeed, Members, make_device_train_step, make_heads_step, stacked_copies

  batch, size, classes = shape
  mesh = distributed.make_mesh()
  rng = np.random.default_rng(0)
  num_images = 4 * batch  # synthetic "dataset" on device
  images = jax.device_put(rng.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8),
                          distributed.replicated(mesh))
  labels = jax.device_put(rng.integers(0, classes, num_images).astype(np.int32), distributed.replicated(mesh))
  counts = jnp.asarray(np.maximum(np.bincount(np.asarray(labels), minlength=classes), 1), jnp.float32)
  model = build_model({'name': model_name, 'dtype': dtype}, classes)
  config = base_config()
  spec = BatchSpec(batch_size=batch, steps_per_epoch=num_images // batch, augment=True, mean=(0.5, 0.5, 0.5),
                   std=(0.25, 0.25, 0.25), dtype=DTYPES[dtype])
  tx, schedule = optim.stage_optimizer(config.stage1, 10_000, spec.steps_per_epoch)
  key = jax.random.key(0)
  backbone, stats = model.init_backbone(key, (size, size, 3))
  feature_dim = model.feature_dim((size, size, 3))
  head = model.init_head(key, feature_dim)
  fresh = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731  (each measured state is donated)
  extra = {'model': model_name, 'batch': batch, 'image_size': size, 'dtype': dtype}

  features_fn = make_features_fn(model, spec.mean, spec.std, spec.dtype)

  def eval_step(state, batch_images):
    return state, features_fn(state, batch_images)

  eval_images = jax.device_put(images[:batch], distributed.batch_sharded(mesh))  # split like evaluation batches

  if not train:
    variables = {'backbone': backbone, 'batch_stats': stats}
    measure('eval_forward', jax.jit(eval_step), variables, (eval_images,), batch, steps, blocks, extra)
    return

  params = jax.tree.map(jnp.copy, {'backbone': backbone, 'head': head})  # this state gets donated
  key_data = jax.random.key_data(key)
  state = TrainState(jnp.zeros((), jnp.int32), params, fresh(stats), tx.init(params), {}, fresh(key_data))
  step = make_device_train_step(model, tx, cross_entropy, schedule, spec, distributed.batch_sharded(mesh),
                                distributed.replicated(mesh))
  stage1_record, state = measure('stage1_train', step, state, (images, labels), batch, steps, blocks, extra)
  if backbones > 1:  # K backbones in one vmapped step, as recipe.backbones_at_once trains them
    values = (config.stage1.learning_rate, config.stage1.weight_decay, 0.0)
    members = Members(*(jnp.full((backbones,), value, jnp.float32) for value in values), optimizer=lambda lr, wd:
                      optim.stage_optimizer(config.stage1, 10_000, spec.steps_per_epoch, lr, wd))
    one = {'backbone': backbone, 'head': head}
    stacked_state = TrainState(jnp.zeros((), jnp.int32), *(stacked_copies(tree, backbones) for tree in
                                                           (one, stats, tx.init(one))), {}, fresh(key_data))
    stacked_step = make_device_train_step(model, None, cross_entropy, None, spec, distributed.batch_sharded(mesh),
                                          distributed.replicated(mesh), members=members)
    measure('stage1_train_stacked', stacked_step, stacked_state, (images, labels), backbones * batch, steps, blocks,
            {**extra, 'backbones': backbones})
  if real_data:
    # Same step on real 32x32 images (the embedded dataset, prepared offline): the device pipeline
    # reads nothing from the host per step, so the rate should equal the synthetic one.
    from bwlm_jax.data import load_dataset
    data_cfg = config.data
    data_cfg.imbalance_factor = 50.0
    train = load_dataset(data_cfg).train
    real_images = jax.device_put(train.images, distributed.replicated(mesh))
    real_labels = jax.device_put(train.labels.astype(np.int32), distributed.replicated(mesh))
    real_spec = dataclasses.replace(spec, steps_per_epoch=-(-len(train) // batch))
    real_step = make_device_train_step(model, tx, cross_entropy, schedule, real_spec, distributed.batch_sharded(mesh),
                                       distributed.replicated(mesh))
    _, state = measure('stage1_train_real_data', real_step, state, (real_images, real_labels), batch, steps, blocks,
                       {**extra, 'dataset': 'embedded IF 50'})
  if not stage2:
    return stage1_record
  frozen = {'params': state.params['backbone'], 'batch_stats': state.batch_stats}

  def head_setting(alpha):
    return HeadSetting.from_config(config.stage2).replace(alpha=float(alpha),
                                                          epochs=-(-10_000 // spec.steps_per_epoch))

  def heads_step_and_state(kind: str, count: int):
    """Stage 2's one step (a grid of `count` heads) fed `kind`, and a fresh state for it."""
    settings = [head_setting(a) for a in np.linspace(0.0, 1.0, count)]
    step, init_opt_state = make_heads_step(model, settings, config.stage2, counts, HeadsFeed(kind, spec), None,
                                           distributed.batch_sharded(mesh), distributed.replicated(mesh))
    stacked = {'head': fresh(stacked_copies(head, count))}
    return step, TrainState(jnp.zeros((), jnp.int32), stacked, {}, init_opt_state(stacked),
                            jax.tree.map(jnp.copy, frozen), fresh(jax.random.key_data(key)))

  measure('stage2_train_uncached', *heads_step_and_state('device', 1), (images, labels), batch, steps, blocks, extra)

  variables = {'backbone': frozen['params'], 'batch_stats': frozen['batch_stats']}
  start = time.perf_counter()
  features = jnp.concatenate([features_fn(variables, images[i:i + batch]) for i in range(0, num_images, batch)])
  jax.block_until_ready(features)
  cache_s = time.perf_counter() - start
  measure('stage2_train_cached', *heads_step_and_state('cached', 1), (features, labels), batch, steps * 20, blocks,
          {**extra, 'feature_cache_s_for_%d_images' % num_images: round(cache_s, 3)})
  measure(f'stage2_sweep_{heads}_heads_cached', *heads_step_and_state('cached', heads), (features, labels), batch,
          steps * 20, blocks, extra)

  measure('eval_forward', jax.jit(eval_step), variables, (eval_images,), batch, steps, blocks, extra)
  return stage1_record


def compare_with_torch(jax_record: dict, python: str, blocks: int, steps: int) -> None:
  """The PyTorch step of the same ResNet-32 (a separate process: its own threads), then the ratio."""
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks',
                        'torch_step.py')
  env = {key: value for key, value in os.environ.items() if key != 'GLIBC_TUNABLES'}  # PyTorch's own malloc use
  device = 'cpu' if jax_record['device'] == 'cpu' else 'cuda'  # JAX's device_kind: 'cpu' or the GPU's name
  done = subprocess.run([python, script, f'--batch={jax_record["batch"]}', f'--image_size={jax_record["image_size"]}',
                         f'--blocks={blocks}', f'--steps={steps}', f'--device={device}', f'--threads={_THREADS.value}'],
                        capture_output=True, text=True, env=env)
  if done.returncode:
    raise app.UsageError(f'--torch_python={python}: the PyTorch step failed: {done.stderr.strip()[-300:]}')
  torch_record = json.loads(done.stdout.strip().splitlines()[-1])
  print(json.dumps(torch_record), flush=True)
  print(json.dumps({'measurement': 'stage1_train_jax_over_pytorch', 'jax_images_per_s': jax_record['images_per_s'],
                    'pytorch_images_per_s': torch_record['images_per_s'], 'devices': jax_record['devices'],
                    'ratio': round(jax_record['images_per_s'] / torch_record['images_per_s'], 3)}), flush=True)


def family_comparison(model_name: str, dtype: str, shape: tuple, steps: int, blocks: int, torch_python) -> None:
  """`model_name`'s training step and evaluation forward pass, each in a process of its own (this script with
  --only; its peak resident memory from the kernel), then the reference PyTorch class's, and the ratios."""
  batch, size, classes = shape
  common = [f'--models={model_name}', f'--dtypes={dtype}', f'--batch={batch}', f'--image_size={size}',
            f'--steps={steps}', f'--blocks={blocks}', f'--cpu_devices={_CPU_DEVICES.value}']
  for kind in ('train', 'eval'):
    jax_record = _child([sys.executable, os.path.abspath(__file__), f'--only={kind}', *common])
    if not torch_python:
      continue
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'torch_step.py')
    env = {key: value for key, value in os.environ.items() if key != 'GLIBC_TUNABLES'}  # PyTorch's own malloc use
    torch_record = _child([torch_python, script, f'--model={model_name}', f'--kind={kind}', f'--batch={batch}',
                           f'--image_size={size}', f'--classes={classes}', f'--steps={steps}', f'--blocks={blocks}',
                           f'--threads={_THREADS.value}', f'--dtype={dtype}'], env)
    print(json.dumps({'measurement': f'{kind}_jax_over_pytorch', 'model': model_name, 'image_size': size,
                      'batch': batch, 'jax_images_per_s': jax_record['images_per_s'],
                      'pytorch_images_per_s': torch_record['images_per_s'],
                      'ratio': round(jax_record['images_per_s'] / torch_record['images_per_s'], 3),
                      'jax_peak_rss_mb': jax_record['peak_rss_mb'],
                      'pytorch_peak_rss_mb': torch_record['peak_rss_mb']}), flush=True)


def _child(command: list, env=None) -> dict:
  """The last JSON record `command` prints (with its process's peak resident memory), printed here too."""
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  if done.returncode:
    raise app.UsageError(f'{os.path.basename(command[1])} failed: {done.stderr.strip()[-400:]}')
  record = json.loads(done.stdout.strip().splitlines()[-1])
  print(json.dumps(record), flush=True)
  return record


def main(argv):
  cli.no_arguments(argv)
  from bwlm_jax.models.registry import cpu_runtime
  in_process = [name for name in _MODELS.value if name in _SHAPES or _ONLY.value] or _MODELS.value
  runtime = cpu_runtime(in_process[0])  # the families compared with PyTorch each run in processes of their own
  process_setup.start_process(_CPU_DEVICES.value, runtime)
  _RUNTIME.append(process_setup.cpu_runtime(runtime) if process_setup.runs_on_cpu() else None)
  import jax
  from bwlm_jax.models import MODEL_NAMES
  on_cpu = jax.default_backend() == 'cpu'
  for model_name in _MODELS.value:
    if model_name not in MODEL_NAMES:
      raise app.UsageError(f'unknown model {model_name!r}; expected one of {MODEL_NAMES}.')
    default_batch, default_size, classes = _SHAPES.get(model_name, FAMILY_SHAPE)
    shape = (_BATCH.value or default_batch, _IMAGE_SIZE.value or default_size, classes)
    small = shape[1] <= 64
    steps = _STEPS.value or (10 if small else (1 if on_cpu else 5))
    blocks = _BLOCKS.value if small or not on_cpu else 1
    dtypes = _DTYPES.value or (['float32', 'bfloat16'] if small or not on_cpu else ['float32'])
    torch_python = _TORCH_PYTHON.value or (sys.executable if importlib.util.find_spec('torch') else None)
    torch_python = None if torch_python == 'none' else torch_python
    for dtype in dtypes:
      if _ONLY.value:  # one measurement of a family comparison, in its own process
        record = run_model(model_name, dtype, steps, blocks, 0, False, _ONLY.value == 'train', shape, False, 0)
        continue
      if _FAMILY_COMPARISON.value or (_FAMILY_COMPARISON.value is None and model_name not in _SHAPES):
        family_comparison(model_name, dtype, shape, steps, blocks, torch_python)
        continue
      train = small or (_TRAIN_224.value if _TRAIN_224.value is not None else not on_cpu)
      record = run_model(model_name, dtype, steps, blocks, _HEADS.value, _REAL_DATA.value and small, train, shape,
                         _STAGE2.value, _BACKBONES.value)
      if model_name == 'resnet32' and dtype == 'float32' and torch_python and record:
        compare_with_torch(record, torch_python, blocks, steps)


if __name__ == '__main__':
  cli.run(main)
