"""Every backbone family the library builds (each declared in its model file as a `family.Family`), and the
lookup by model.name. Adding a backbone is a model file that declares its family, registered here."""

from __future__ import annotations

from typing import Optional

from bwlm_jax.models import conv, efficientnet_lite, resnet_cifar, resnet_imagenet, vit
from bwlm_jax.models.family import DTYPES, Family
from bwlm_jax.runtime.errors import UsageError

FAMILIES = (resnet_cifar.FAMILY, resnet_imagenet.FAMILY, efficientnet_lite.FAMILY, vit.TIMM_FAMILY, vit.CLIP_FAMILY)
MODEL_NAMES = tuple(name for family in FAMILIES for name in family.models)  # every model.name, in this order
DTYPE_NAMES = tuple(DTYPES)
_BY_NAME = {name: family for family in FAMILIES for name in family.models}
assert len(_BY_NAME) == len(MODEL_NAMES), 'a model.name is declared by two families'


def family_of(model_name: str) -> Family:
  """The family that builds `model_name`; an error naming model.name and the choices for any other."""
  if model_name not in _BY_NAME:
    raise UsageError(f'unknown model.name={model_name!r}; expected one of {MODEL_NAMES}.')
  return _BY_NAME[model_name]


def cpu_runtime(model_name: str, cpu_kind: Optional[str] = None) -> str:
  """The CPU settings `model_name`'s family runs with on a CPU of `cpu_kind` (conv.cpu_kind; None: this one's)
  (process_setup.CPU_RUNTIMES), for start_process."""
  family = family_of(model_name)
  return dict(family.kind_cpu_runtimes).get(cpu_kind or conv.cpu_kind(), family.cpu_runtime)


def with_weights_layout() -> tuple[str, ...]:
  """The families whose weights are read and written in a source's layout, by name."""
  return tuple(family.name for family in FAMILIES if family.layout is not None)
