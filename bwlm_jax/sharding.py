"""The device mesh: one 'data' axis over every device; batches are split over it, parameters replicated."""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding, PartitionSpec


def make_mesh() -> jax.sharding.Mesh:
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))
