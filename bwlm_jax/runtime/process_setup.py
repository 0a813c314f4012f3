"""Process set-up shared by the launch scripts: CPU runtime settings, CPU device count, and TensorFlow (off the GPUs)
imported only where it feeds data."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform as _platform
import sys
from collections.abc import Mapping
from bwlm_jax.runtime.errors import UsageError

# CPU-only runtime settings, each chosen by its measured effect on the training step and the evaluation forward
# pass, per model family (figures per CPU and jaxlib in docs/PERFORMANCE.md, "CPU settings per family").
# 1. XLA:CPU hands convolutions, dots, element-wise ops and reductions to its YNNPACK backend: without it a
#    ResNet's weight-gradient convolutions wait on transposes that re-compute whole BatchNorm/ReLU/residual
#    chains. It slows EfficientNet-Lite and the ViTs and multiplies their memory.
YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'
YNN_FUSIONS = 'dot,eltwise,reduce,individual_convolution,individual_dot'
YNN_TESTED_JAXLIB = ('0.10.', '0.12.')  # experimental: an XLA that does not know the flag aborts at start
# 2. glibc malloc keeps freed memory and backs it with huge pages: by default every step maps and unmaps its
#    buffers (hundreds of thousands of page faults a step).
MALLOC_TUNABLES = {'glibc.malloc.hugetlb': '1', 'glibc.malloc.arena_max': '1', 'glibc.malloc.mmap_max': '0',
                   'glibc.malloc.trim_threshold': str(2**40)}
# 2b. Huge pages alone: the buffers are still mapped and unmapped each step, but in 2 MiB pages (transparent huge
#     pages on request, the kernel's `madvise` mode): a ViT-S step's 3.5 million page faults become 0.1 million,
#     without the growth that keeping freed memory costs a step of many large, short-lived buffers.
HUGE_PAGE_TUNABLES = {'glibc.malloc.hugetlb': '1'}
# The sets of them a process can take, by name: (the YNNPACK fusions XLA_FLAGS sets, None: XLA's default; glibc
# malloc settings). 'plain' is JAX as it comes (jaxlib 0.12's XLA:CPU already hands its dots to YNNPACK);
# 'no-ynnpack' turns that off too (XLA's Eigen kernels: the ViTs' and ImageNet ResNets' steps 8-15 % faster on an
# AVX2-only CPU, EfficientNet-Lite's 2.6x slower). A model family names its own (`models.family.Family.cpu_runtime`,
# and `kind_cpu_runtimes` per CPU kind); BWLM_CPU_TUNING=NAME forces one, =0 turns every CPU choice off.
CPU_RUNTIMES = {'ynnpack+malloc': (YNN_FUSIONS, MALLOC_TUNABLES), 'malloc': (None, MALLOC_TUNABLES),
                'hugepages': (None, HUGE_PAGE_TUNABLES), 'plain': (None, {}), 'no-ynnpack': ('', {})}
DEFAULT_CPU_RUNTIME = 'ynnpack+malloc'  # where no model is known (notebooks, tools without a config)
# 3. Not applied by default: --cpu_devices=N splits the batch over N JAX CPU devices (faster on jaxlib 0.10,
#    which hung in some runs; little gain on jaxlib 0.12: docs/PERFORMANCE.md).
# jaxlib 0.11 and 0.12's XLA:CPU return NaN for part of a trained ResNet's jitted bfloat16 features (not in
# float32, not with jaxlib 0.10.2): refused before training (docs/PERFORMANCE.md).
BF16_BROKEN_CPU_JAXLIB = ('0.11.', '0.12.')
OPT_OUT = 'BWLM_CPU_TUNING'  # auto (the model family's settings), 0 (none, no CPU choices), or a CPU_RUNTIMES name
# How models/conv.py computes a convolution's weight gradient: read here so that a bad value fails at start.
CONV_MODE_VARIABLE = 'BWLM_CONV_WEIGHT_GRADIENT'
CONV_MODES = ('auto', 'xla', 'chunked')
# How models/conv.py computes a depthwise convolution: XLA's, or as shifted multiply-adds.
DEPTHWISE_VARIABLE = 'BWLM_DEPTHWISE_CONV'
DEPTHWISE_MODES = ('auto', 'xla', 'shifted')


def quiet_library_logs() -> None:
  """Library INFO logs (orbax, tfds) off the terminal; warnings still show."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)


def tensorflow(needed_for: str):
  """TensorFlow, imported only where it feeds data (tfds sources, streamed data): kept off the GPUs so JAX
  gets all their memory; a one-line error naming `needed_for` where it is not installed.

  On CPUs where TensorFlow turns on its oneDNN kernels (AVX-512 ones) it announces them at import whatever
  the log level, so a one-line error would not be one line: they are off unless the user set
  TF_ENABLE_ONEDNN_OPTS (they speed up TF's matrix ops, which only feed data here).
  """
  try:
    return _tensorflow_off_the_gpus()
  except ImportError:
    raise UsageError(f'{needed_for} needs TensorFlow, which is not installed here: pip install tensorflow-cpu '
                     '(requirements.txt has it). Images kept in memory (the embedded set, an image folder with '
                     'data.pipeline=device) need neither TensorFlow nor tensorflow-datasets.') from None


@functools.cache
def _tensorflow_off_the_gpus():
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  return tf


def tensorflow_datasets(needed_for: str):
  """tensorflow-datasets (and TensorFlow under it, as `tensorflow` sets it up), or a one-line error."""
  tensorflow(needed_for)
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UsageError(f'{needed_for} needs tensorflow-datasets, which is not installed here: pip install '
                     'tensorflow-datasets (requirements.txt has it).') from None
  return tfds


def cpu_tuned_environ(environ: Mapping[str, str], jaxlib_version: str, runtime: str = DEFAULT_CPU_RUNTIME
                      ) -> dict[str, str]:
  """`environ` plus the settings of CPU runtime `runtime` (a CPU_RUNTIMES name); a value the user set is kept."""
  ynn_fusions, tunables = CPU_RUNTIMES[runtime]
  env = dict(environ)
  xla_flags = env.get('XLA_FLAGS', '')
  if ynn_fusions is not None and YNN_FLAG not in xla_flags and jaxlib_version.startswith(YNN_TESTED_JAXLIB):
    env['XLA_FLAGS'] = f'{xla_flags} {YNN_FLAG}={ynn_fusions}'.strip()
  if tunables:
    user_tunables = dict(item.split('=', 1) for item in env.get('GLIBC_TUNABLES', '').split(':') if '=' in item)
    env['GLIBC_TUNABLES'] = ':'.join(f'{key}={value}' for key, value in {**tunables, **user_tunables}.items())
  return env


def cpu_runtime(family_runtime: str = DEFAULT_CPU_RUNTIME, environ: Mapping[str, str] = os.environ) -> str:
  """The CPU_RUNTIMES name this process takes: BWLM_CPU_TUNING's (0: plain), else `family_runtime` (auto, 1 or
  unset); a one-line error for another value."""
  value = environ.get(OPT_OUT, 'auto') or 'auto'
  if value in ('auto', '1'):
    return family_runtime
  if value == '0':
    return 'plain'
  if value not in CPU_RUNTIMES:
    raise UsageError(f'{OPT_OUT}={value!r}: expected auto, 0 or one of {", ".join(CPU_RUNTIMES)}.')
  return value


def cpu_tuning_applies(environ: Mapping[str, str] = os.environ) -> bool:
  """False when opted out or when JAX will run on an accelerator (a GPU/TPU plugin is installed)."""
  return environ.get(OPT_OUT, 'auto') != '0' and runs_on_cpu(environ)


def check_compute_dtype(dtype: str, environ: Mapping[str, str] = os.environ, jaxlib_version: str | None = None):
  """An error for a compute dtype known to give wrong numbers on the CPU this process will use."""
  jaxlib_version = jaxlib_version or importlib.metadata.version('jaxlib')
  if dtype == 'bfloat16' and jaxlib_version.startswith(BF16_BROKEN_CPU_JAXLIB) and runs_on_cpu(environ):
    raise UsageError(f'model.dtype=bfloat16 on a CPU with jaxlib {jaxlib_version}: its XLA:CPU turns a trained '
                     "ResNet's features into NaN (docs/PERFORMANCE.md). Use model.dtype=float32 (bfloat16 gains "
                     'little on a CPU), jaxlib 0.10.2 (Python 3.11) or a GPU.')


def runs_on_cpu(environ: Mapping[str, str] = os.environ) -> bool:
  """Whether JAX will run on the CPU: JAX_PLATFORMS names it first, or no GPU/TPU plugin is installed."""
  first_platform = environ.get('JAX_PLATFORMS', '').split(',')[0]
  if first_platform:
    return first_platform == 'cpu'
  plugins = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin', 'libtpu')
  return not any(importlib.util.find_spec(name) for name in plugins)


def tune_cpu_runtime(reexec: bool = True, family_runtime: str = DEFAULT_CPU_RUNTIME) -> None:
  """Apply the settings of the CPU runtime this process takes (`cpu_runtime`); call before JAX starts (first
  thing in a launch script's main).

  glibc reads its malloc settings only at process start, so with `reexec` the script restarts itself once
  (same PID, arguments and environment plus the settings). Without it (e.g. in a notebook) only the XLA
  flags are set.
  """
  runtime = cpu_runtime(family_runtime)
  if not cpu_tuning_applies():
    return
  tuned = cpu_tuned_environ(os.environ, importlib.metadata.version('jaxlib'), runtime)
  if 'XLA_FLAGS' in tuned:
    os.environ['XLA_FLAGS'] = tuned['XLA_FLAGS']
  glibc = _platform.system() == 'Linux' and _platform.libc_ver()[0] == 'glibc'
  if reexec and glibc and sys.executable and tuned.get('GLIBC_TUNABLES') != os.environ.get('GLIBC_TUNABLES'):
    os.environ['GLIBC_TUNABLES'] = tuned['GLIBC_TUNABLES']
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def conv_mode(environ: Mapping[str, str] = os.environ, variable: str = CONV_MODE_VARIABLE) -> str:
  """`BWLM_CONV_WEIGHT_GRADIENT` (or `BWLM_DEPTHWISE_CONV`; default `auto`), or a one-line error for a value
  that is not one of its modes."""
  modes = DEPTHWISE_MODES if variable == DEPTHWISE_VARIABLE else CONV_MODES
  mode = environ.get(variable, 'auto') or 'auto'
  if mode not in modes:
    raise UsageError(f'{variable}={mode!r}: expected one of {", ".join(modes)}.')
  return mode


def use_cpu_devices(count: int) -> None:
  """Split the batch over `count` JAX CPU devices (set before JAX starts; no effect on GPU/TPU runs)."""
  if count < 1:
    raise UsageError(f'cpu_devices={count}: expected a positive number of devices.')
  if count > 1:
    import jax
    jax.config.update('jax_num_cpu_devices', count)


def start_process(cpu_devices: int = 1, family_runtime: str = DEFAULT_CPU_RUNTIME) -> None:
  """What every launch script does before JAX runs anything: CPU settings (those `family_runtime` names, the
  model family's), CPU device count, quiet logs."""
  tune_cpu_runtime(family_runtime=family_runtime)
  conv_mode()  # a bad BWLM_CONV_WEIGHT_GRADIENT or BWLM_DEPTHWISE_CONV fails here, before anything runs
  conv_mode(variable=DEPTHWISE_VARIABLE)
  use_cpu_devices(cpu_devices)
  quiet_library_logs()


def define_cpu_devices_flag():
  """The launch scripts' --cpu_devices flag."""
  from absl import flags
  return flags.DEFINE_integer('cpu_devices', 1, 'CPU runs: split each batch over this many JAX CPU devices (the '
                              'global batch size does not change and must divide by it). Faster on several cores, '
                              'but see docs/PERFORMANCE.md before using it. Ignored on GPU/TPU.')
