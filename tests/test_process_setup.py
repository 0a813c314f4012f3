"""CPU runtime settings of the launch scripts: environment, restart with malloc settings, CPU device count."""

import importlib.metadata
import os
import platform as std_platform
import subprocess
import sys

import pytest

from bwlm_jax.runtime import process_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('jaxlib', ['0.10.2', '0.12.0.1'])
def test_tuned_environ_adds_the_settings(jaxlib):
  env = process_setup.cpu_tuned_environ({'PATH': '/bin'}, jaxlib)
  assert env['PATH'] == '/bin'
  assert env['XLA_FLAGS'] == f'{process_setup.YNN_FLAG}={process_setup.YNN_FUSIONS}'
  assert dict(item.split('=') for item in env['GLIBC_TUNABLES'].split(':')) == process_setup.MALLOC_TUNABLES


def test_tuned_environ_keeps_what_the_user_set():
  user = {'XLA_FLAGS': f'--xla_cpu_enable_fast_math=true {process_setup.YNN_FLAG}=dot',
          'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4:glibc.rtld.optional_static_tls=2048'}
  env = process_setup.cpu_tuned_environ(user, '0.10.2')
  assert env['XLA_FLAGS'] == user['XLA_FLAGS']
  tunables = dict(item.split('=') for item in env['GLIBC_TUNABLES'].split(':'))
  assert tunables['glibc.malloc.arena_max'] == '4'
  assert tunables['glibc.rtld.optional_static_tls'] == '2048'
  assert tunables['glibc.malloc.mmap_max'] == '0'


@pytest.mark.parametrize('runtime,xla_flags,tunables', [
    ('ynnpack+malloc', f'{process_setup.YNN_FLAG}={process_setup.YNN_FUSIONS}', process_setup.MALLOC_TUNABLES),
    ('malloc', None, process_setup.MALLOC_TUNABLES), ('hugepages', None, {'glibc.malloc.hugetlb': '1'}),
    ('plain', None, None), ('no-ynnpack', f'{process_setup.YNN_FLAG}=', None)])
def test_each_cpu_runtime_adds_its_own_settings(runtime, xla_flags, tunables):
  env = process_setup.cpu_tuned_environ({'PATH': '/bin'}, '0.12.0.1', runtime)
  assert env.get('XLA_FLAGS') == xla_flags
  assert (dict(item.split('=') for item in env['GLIBC_TUNABLES'].split(':')) if 'GLIBC_TUNABLES' in env
          else None) == tunables


@pytest.mark.parametrize('value,chosen', [
    (None, 'malloc'), ('auto', 'malloc'), ('1', 'malloc'), ('0', 'plain'), ('plain', 'plain'),
    ('ynnpack+malloc', 'ynnpack+malloc')])
def test_cpu_runtime_is_the_familys_unless_the_variable_names_one(value, chosen):
  environ = {} if value is None else {process_setup.OPT_OUT: value}
  assert process_setup.cpu_runtime('malloc', environ) == chosen


def test_unknown_cpu_runtime_is_one_line():
  with pytest.raises(process_setup.UsageError, match=r"BWLM_CPU_TUNING='fast': expected auto, 0 or one of"):
    process_setup.cpu_runtime('plain', {process_setup.OPT_OUT: 'fast'})


def test_every_family_names_a_cpu_runtime():
  from bwlm_jax.models import registry
  assert all(family.cpu_runtime in process_setup.CPU_RUNTIMES for family in registry.FAMILIES)
  # Measured (docs/PERFORMANCE.md, "CPU settings per family"): YNNPACK doubles ResNet-32's step and slows the
  # others at their weights' 224 px.
  assert registry.cpu_runtime('resnet32', 'amd-avx512') == registry.cpu_runtime('resnet8', 'amd-avx512') == (
      'ynnpack+malloc')
  others = ('resnet50', 'efficientnet_lite0', 'vit_small_patch16', 'clip_vit_b16')
  for kind in ('amd-avx512', 'other'):
    assert {registry.cpu_runtime(name, kind) for name in others} == {'plain'}
  # On Intel's AVX-512 CPUs the same in huge pages (ViT-S's step 1.3x faster, the same memory).
  assert {registry.cpu_runtime(name, 'intel-avx512') for name in others} == {'hugepages'}
  # On AVX2-only CPUs XLA's Eigen kernels beat YNNPACK's dots for the ViTs and ImageNet ResNets, not EfficientNet-Lite.
  assert [registry.cpu_runtime(name, 'avx2') for name in others] == ['no-ynnpack', 'plain', 'no-ynnpack', 'no-ynnpack']
  # On Intel's AVX-512 CPUs the CIFAR ResNets run as fast without the YNNPACK fusions, in less memory.
  assert [registry.cpu_runtime('resnet32', kind) for kind in ('avx2', 'amd-avx512', 'intel-avx512', 'other')] == [
      'ynnpack+malloc', 'ynnpack+malloc', 'malloc', 'ynnpack+malloc']
  assert all(runtime in process_setup.CPU_RUNTIMES for family in registry.FAMILIES
             for _, runtime in family.kind_cpu_runtimes)


def test_experimental_xla_flag_only_for_the_tested_jaxlib():
  # An XLA that does not know a flag in XLA_FLAGS aborts, so an untested jaxlib does not get it.
  for untested in ('0.11.0', '0.13.0'):
    env = process_setup.cpu_tuned_environ({'XLA_FLAGS': '--xla_dump_to=/tmp/x'}, untested)
    assert env['XLA_FLAGS'] == '--xla_dump_to=/tmp/x'
  assert 'glibc.malloc.hugetlb=1' in env['GLIBC_TUNABLES']


@pytest.mark.parametrize('jaxlib,environ,refused', [
    ('0.12.0.1', {}, True), ('0.10.2', {}, False), ('0.12.0.1', {'JAX_PLATFORMS': 'cuda'}, False)])
def test_bfloat16_refused_where_xla_cpu_miscomputes_it(jaxlib, environ, refused, monkeypatch):
  monkeypatch.setattr(process_setup.importlib.util, 'find_spec', lambda name: None)  # no GPU plugin here
  process_setup.check_compute_dtype('float32', environ, jaxlib)
  if refused:
    with pytest.raises(process_setup.UsageError, match='bfloat16 on a CPU with jaxlib 0.12.0.1'):
      process_setup.check_compute_dtype('bfloat16', environ, jaxlib)
  else:
    process_setup.check_compute_dtype('bfloat16', environ, jaxlib)


@pytest.mark.parametrize('environ,applies', [
    ({}, True), ({'JAX_PLATFORMS': 'cpu'}, True), ({'JAX_PLATFORMS': 'cuda,cpu'}, False),
    ({'JAX_PLATFORMS': 'tpu'}, False), ({'BWLM_CPU_TUNING': '0'}, False)])
def test_tuning_applies_to_cpu_runs_only(environ, applies):
  assert process_setup.cpu_tuning_applies(environ) == applies


def test_cpu_devices_must_be_positive():
  with pytest.raises(ValueError, match='cpu_devices=0'):
    process_setup.use_cpu_devices(0)


SCRIPT = '''
import os, sys
from bwlm_jax.runtime import process_setup
print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), sys.argv[1:], flush=True)
process_setup.start_process(2, os.environ.get('FAMILY_RUNTIME', 'ynnpack+malloc'))
import jax
print('running', os.getpid(), os.environ.get('GLIBC_TUNABLES', '-'), os.environ.get('XLA_FLAGS', '-'), sys.argv[1:],
      jax.device_count())
'''


@pytest.mark.skipif(std_platform.libc_ver()[0] != 'glibc', reason='malloc settings are glibc tunables')
def test_start_process_restarts_once_with_the_settings(tmp_path):
  env = {key: value for key, value in os.environ.items()
         if key not in ('GLIBC_TUNABLES', 'XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_NUM_CPU_DEVICES', process_setup.OPT_OUT)}
  result = subprocess.run([sys.executable, '-c', SCRIPT, 'an-arg', '--a-flag=1'], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line.split(' ', 2) for line in result.stdout.splitlines()]
  starts = [rest for word, _, rest in lines if word == 'start']
  running = [(pid, rest) for word, pid, rest in lines if word == 'running']
  assert len(starts) == 2 and starts[0].startswith("- ['an-arg', '--a-flag=1']")
  assert 'glibc.malloc.mmap_max=0' in starts[1]
  assert len(running) == 1 and running[0][0] == lines[0][1]  # same process (exec), started once more
  measured = importlib.metadata.version('jaxlib').startswith(process_setup.YNN_TESTED_JAXLIB)
  assert (process_setup.YNN_FLAG in running[0][1]) == measured  # the flag only on the jaxlibs it was measured on
  assert "['an-arg', '--a-flag=1']" in running[0][1]
  assert running[0][1].endswith(' 2')  # --cpu_devices=2


def test_a_family_without_malloc_settings_starts_once_without_the_flag():
  env = {key: value for key, value in os.environ.items()
         if key not in ('GLIBC_TUNABLES', 'XLA_FLAGS', 'JAX_PLATFORMS', 'JAX_NUM_CPU_DEVICES', process_setup.OPT_OUT)}
  result = subprocess.run([sys.executable, '-c', SCRIPT], capture_output=True, text=True,
                          env={**env, 'FAMILY_RUNTIME': 'plain'}, cwd=ROOT, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line.split(' ') for line in result.stdout.splitlines()]
  assert [words[0] for words in lines] == ['start', 'running'] and lines[0][1] == lines[1][1]  # no restart
  assert lines[1][2] == '-' and process_setup.YNN_FLAG not in result.stdout
