"""Shared test set-up: quiet TensorFlow, session-wide caches, a session-wide prepared embedded dataset."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache for the session and the launch scripts it starts: the many runs of the
# same tiny networks compile each step once (about a quarter of the suite's time on 2 cores).
# Likewise the embedded set's drawn images (bwlm_jax.data.synthetic.embedded), kept out of the user's ~/.cache.
for variable, prefix in (('JAX_COMPILATION_CACHE_DIR', 'bwlm-jax-test-cache-'),
                         ('BWLM_JAX_CACHE_DIR', 'bwlm-jax-test-data-cache-')):
  if variable not in os.environ:
    os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, os.environ[variable], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')

import pytest  # noqa: E402

from bwlm_jax.config import base_config  # noqa: E402


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """A tfds data dir with `bwlm_shapes` prepared once for the whole session (left empty where tfds is not
  installed: the embedded set in memory needs none, and the streamed tests then fail to import it)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    return data_dir
  from bwlm_jax.data.synthetic import embedded_tfds  # noqa: F401  (registers the builder)
  tfds.builder('bwlm_shapes', data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture
def embedded_data_config(tfds_dir):
  cfg = base_config().data
  cfg.name = 'embedded'
  cfg.imbalance_factor = 50.0
  cfg.data_dir = tfds_dir
  return cfg
