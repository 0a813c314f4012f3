"""What every stage of one training run shares."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from bwlm_jax.runtime import distributed
from bwlm_jax.data import LongTailDataset
from bwlm_jax.features import SplitFeatures
from bwlm_jax.models import Model


@dataclasses.dataclass
class TrainContext:
  config: object
  workdir: str
  dataset: LongTailDataset
  model: Model
  mesh: jax.sharding.Mesh
  split_features: SplitFeatures
  device_arrays: dict = dataclasses.field(default_factory=dict)  # name -> (images, labels) kept on device
  fingerprint: dict = dataclasses.field(default_factory=dict)  # `fingerprint.run_fingerprint`
  pretrained: Optional[dict] = None  # {'params', 'batch_stats'} of model.init_from's backbone

  @property
  def replicated(self):
    return distributed.replicated(self.mesh)

  @property
  def data_sharding(self):
    return distributed.batch_sharded(self.mesh)

  @property
  def image_shape(self):
    size = self.dataset.image_size
    return (size, size, 3)
