"""What the tests share: the tiny run (embedded data at IF 10 with max 40 images per class, ResNet-8), tree
and reference comparisons, random weights of the full-size networks."""

from bwlm_jax.config import base_config


def tiny_config(tfds_dir: str, epochs: int = 2):
  """311 training images (40 .. 4 per class: no Many class), 400 val images, batch 32, `epochs` per stage."""
  config = base_config()
  config.data.name = 'embedded'
  config.data.data_dir = tfds_dir
  config.data.imbalance_factor = 10.0
  config.data.max_count = 40
  config.model.name = 'resnet8'
  config.batch_size = 32
  config.eval_batch_size = 400
  for stage in (config.naive, config.stage1, config.stage2):
    stage.epochs = epochs
  config.stage1.learning_rate = 0.05
  config.stage2.select = 'none'  # one stage-2 setting; tests of selection set a small grid
  config.stage2.augment = True  # the uncached stage-2 path; tests of the cached one turn it off
  return config


def small_grid(config, **grid):
  """Selection on validation over a small grid (fields not given keep the stage-2 value)."""
  config.stage2.select = 'val'
  for field in ('learning_rate', 'epochs', 'weight_decay', 'alpha'):
    config.stage2.grid[field] = grid.get(field)
  return config


def load_config_file(spec: str):
  """A config file as the launch scripts load it (`--config=configs/x.py[:arg]`, relative to the repository)."""
  import os
  from absl import flags
  from ml_collections import config_flags
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values, lock_config=True)
  flag_values(['prog', f'--config={os.path.join(root, spec)}'])
  return flag_values.config


def assert_trees_equal(a, b) -> None:
  """Every leaf of two pytrees equal, bit for bit."""
  import jax
  import numpy as np
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_equals_reference(model, variables, layout, state, images, features, logits, head: str, rtol, atol):
  """A network read from a reference state dict computes the reference's features and logits (its
  `head` classifier), and goes back to the same state dict key for key, value for value."""
  import numpy as np
  from bwlm_jax.models import torch_layout
  ours, _ = model.features(variables['params'], variables['batch_stats'], images, train=False)
  np.testing.assert_allclose(ours, features, rtol=rtol, atol=atol)
  head_params = {'dense': {'kernel': state[f'{head}.weight'].T, 'bias': state[f'{head}.bias']}}
  np.testing.assert_allclose(model.logits(head_params, ours), logits, rtol=rtol, atol=atol)
  back = torch_layout.to_torch(variables, head_params, layout)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def random_backbone(model, image_shape=(32, 32, 3), seed: int = 1) -> dict:
  """{'params', 'batch_stats'} of `model`'s backbone with random values of its shapes, drawn in NumPy (the
  network's own initialisation runs op by op, ~5-20 s for an ImageNet network on 2 cores): He-scaled
  kernels, norms and biases as initialised, N(0, 0.02) for the rest (a ViT's tokens and position
  embeddings)."""
  import jax
  import numpy as np
  shapes = jax.eval_shape(lambda key: model.init_backbone(key, image_shape), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = getattr(path[-1], 'key', None)
    if name in ('scale', 'var', 'bias', 'mean'):
      return (np.ones if name in ('scale', 'var') else np.zeros)(leaf.shape, leaf.dtype)
    scale = np.sqrt(2 / np.prod(leaf.shape[:-1])) if name == 'kernel' else 0.02
    return (rng.standard_normal(leaf.shape) * scale).astype(leaf.dtype)

  params, batch_stats = jax.tree_util.tree_map_with_path(value, shapes)
  return {'params': params, 'batch_stats': batch_stats}


def cpu_model() -> str:
  """This machine's CPU as /proc/cpuinfo names it (vendor / family / model / name): float results made on another
  can differ in their last bits."""
  with open('/proc/cpuinfo') as cpuinfo:
    fields = dict(line.split(':', 1) for line in cpuinfo if ':' in line and line.split(':')[0].strip() in (
        'vendor_id', 'cpu family', 'model', 'model name'))
  return ' / '.join(' '.join(value.split()) for value in fields.values())

