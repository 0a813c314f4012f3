"""Several JAX processes as one run: on a cluster (SLURM, detected by JAX) or on one machine.

  python launch/train.py --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0 ...
  python launch/train.py --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=1 ...

(`launch/local_multiprocess.sh` starts them.) The three values may come from JAX's environment variables
instead (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); `--distributed` lets JAX detect a
cluster (SLURM). On CPUs the processes all-reduce through gloo. Every process must run the same config:
that is checked before any data is read. The devices of every process form one mesh with a 'data' axis
(`make_mesh`): batches are split over it, parameters replicated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from bwlm_jax.runtime import workdir_lock
from bwlm_jax.runtime.errors import RunError, UsageError

_ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES',
        'process_id': 'JAX_PROCESS_ID'}


def define_flags() -> dict:
  """The launch scripts' flags for multi-process runs."""
  return {
      'distributed': flags.DEFINE_bool('distributed', False, 'Multi-host on a cluster: JAX detects the coordinator, '
                                       'process count and index (SLURM; see launch/slurm_train.sh).'),
      'coordinator_address': flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for a '
                                                 'multi-process run without a cluster (or JAX_COORDINATOR_ADDRESS).'),
      'num_processes': flags.DEFINE_integer('num_processes', None, 'Processes in the run (or JAX_NUM_PROCESSES).'),
      'process_id': flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1 (or '
                                         'JAX_PROCESS_ID).'),
      'init_timeout_s': flags.DEFINE_integer('init_timeout_s', 300, 'Seconds a process waits for the others to join.'),
      'heartbeat_timeout_s': flags.DEFINE_integer('heartbeat_timeout_s', 100, 'Seconds without a sign of life '
                                                  'after which a process that died ends the run with an error.'),
  }


def settings(values: dict, environ=os.environ) -> dict | None:
  """{'coordinator_address', 'num_processes', 'process_id'} of a run without a cluster (flags first, then
  JAX's environment variables); None when none is given; a one-line error for an incomplete or
  impossible set."""
  given = {name: values.get(name) if values.get(name) is not None else environ.get(env) for name, env in _ENV.items()}
  if all(value is None for value in given.values()):
    return None
  missing = [f'--{name}' for name, value in given.items() if value is None]
  if missing:
    raise UsageError(f'a multi-process run needs --coordinator_address, --num_processes and --process_id (or '
                     f'{", ".join(_ENV.values())}); missing {", ".join(missing)}.')
  try:
    count, index = int(given['num_processes']), int(given['process_id'])
  except ValueError:
    raise UsageError(f'--num_processes and --process_id must be whole numbers, got {given["num_processes"]!r} and '
                     f'{given["process_id"]!r}.') from None
  if count < 1 or not 0 <= index < count:
    raise UsageError(f'--process_id={index} must lie in 0 .. {count - 1} (--num_processes={count}).')
  if ':' not in str(given['coordinator_address']):
    raise UsageError(f'--coordinator_address={given["coordinator_address"]!r}: expected HOST:PORT.')
  return {'coordinator_address': str(given['coordinator_address']), 'num_processes': count, 'process_id': index}


def start(values: dict) -> None:
  """Join the run's processes (before anything else uses JAX); nothing for a single-process run. CPU
  collectives go through gloo (the setting is for CPUs only: GPU runs use NCCL as they would)."""
  chosen = settings(values)
  if chosen is None and not values.get('distributed'):
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  timeout = values.get('init_timeout_s', 300)
  if chosen and chosen['process_id'] != 0:
    _wait_for_coordinator(chosen['coordinator_address'], timeout)
  try:
    jax.distributed.initialize(**(chosen or {}), initialization_timeout=values.get('init_timeout_s', 300),
                               heartbeat_timeout_seconds=values.get('heartbeat_timeout_s', 100))
  except Exception as err:  # noqa: BLE001  (JAX raises several kinds for an unreachable or refused coordinator)
    where = f'the coordinator at {chosen["coordinator_address"]}' if chosen else 'the cluster\'s coordinator'
    raise RunError(f'could not join {where} within {values.get("init_timeout_s", 300)} s '
                   f'({type(err).__name__}: {" ".join(str(err).split())[:160]}); start process 0 and the others '
                   'with the same --coordinator_address and --num_processes.') from err


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Wait until process 0's coordinator accepts connections: JAX aborts the process (no Python error) when
  it cannot reach one, so an absent coordinator is found here and named in one line instead."""
  host, _, port = address.rpartition(':')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError as err:
      if time.monotonic() >= deadline:
        raise RunError(f'no coordinator answers at {address} after {timeout_s:g} s ({err.strerror or err}): '
                       'start process 0 (--process_id=0) with the same --coordinator_address, or check the '
                       'address.') from None
      time.sleep(0.5)


def check_same_config(config_dict: dict) -> None:
  """Every process runs the same config (else they would train different things and wait on each other):
  one line naming the first process whose config differs from process 0's."""
  if jax.process_count() == 1:
    return
  digest = np.frombuffer(hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).digest(),
                         np.uint8)
  every = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
  differing = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
  if differing:
    raise UsageError(f'the processes run different configs: process {differing[0]} differs from process 0 '
                     '(give every process the same --config and overrides).')


def is_writer() -> bool:
  """Whether this process writes the run's results, tables and figures (process 0 alone does)."""
  return jax.process_index() == 0


@contextlib.contextmanager
def workdir_writer(workdir: str):
  """The job holds WORKDIR's lock while inside (`workdir_lock`): process 0 takes it, and with several
  processes every one learns whether it did, so that all stop alike when another run holds it."""
  taken, error = None, None
  if is_writer():
    try:
      taken = workdir_lock.acquire(workdir)
    except UsageError as err:
      error = err
  if jax.process_count() > 1:
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      error = UsageError(f'process 0 could not take the lock of workdir {workdir} (its error says why); this '
                         'process stops too.')
  if error is not None:
    raise error
  try:
    yield
  finally:
    if taken:
      workdir_lock.release(taken)


def make_mesh() -> jax.sharding.Mesh:
  """Every device of every process on one 'data' axis."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))
