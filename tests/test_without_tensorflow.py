"""The in-memory path without TensorFlow: the embedded set drawn in memory equals its tfds builder, training,
evaluation and prediction run with TensorFlow and tensorflow-datasets hidden from the imports and give the
same results as with them, and a source that needs them is one line saying so."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, 'tests', 'run_without_tensorflow.py')
TINY = ['--config.data.max_count=40', '--config.data.imbalance_factor=10', '--config.naive.epochs=1',
        '--config.stage1.epochs=1', '--config.batch_size=32', '--config.stage2.grid.learning_rate=(0.1,)',
        '--config.stage2.grid.epochs=(2,)', '--config.stage2.grid.weight_decay=(5e-4,)',
        '--config.stage2.grid.alpha=(0.1,0.5)']


def _launch(*args):
  return subprocess.run([sys.executable, RUNNER, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_the_embedded_set_drawn_in_memory_is_its_tfds_builder_example_for_example(tfds_dir):
  import tensorflow_datasets as tfds
  from bwlm_jax.data import tfds_source
  from bwlm_jax.data.synthetic import embedded, shapes
  builder = tfds.builder(embedded.NAME, data_dir=tfds_dir)
  assert tfds_source.class_names(builder) == shapes.class_names()
  for split in ('train', 'test'):
    stored, drawn = tfds_source.read_arrays(builder, split), embedded.split_arrays(split)
    np.testing.assert_array_equal(drawn.images, stored.images)
    np.testing.assert_array_equal(drawn.labels, stored.labels)


def test_train_evaluate_and_predict_without_tensorflow_give_the_results_with_it(tmp_path):
  runs = {}
  for name, hide in (('without', ()), ('with', ('--allow',))):  # installed, and still never imported
    workdir = tmp_path / name
    trained = _launch(*hide, 'launch/train.py', f'--config={ROOT}/configs/quickstart.py', f'--workdir={workdir}',
                      *TINY)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert trained.stdout.rstrip().endswith('tensorflow imported: False')
    runs[name] = json.load(open(workdir / 'results.json'))['models']
  assert runs['without'] == runs['with']
  workdir = tmp_path / 'without'
  evaluated = _launch('launch/evaluate.py', f'--workdir={workdir}')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  from PIL import Image
  from bwlm_jax.data.synthetic import embedded
  Image.fromarray(np.asarray(embedded.split_arrays('test').images[0])).save(tmp_path / 'shape.png')
  predicted = _launch('launch/predict.py', f'--workdir={workdir}', f'--images={tmp_path / "shape.png"}',
                      '--stage=stage2', f'--output={tmp_path / "p.csv"}')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert len(open(tmp_path / 'p.csv').read().splitlines()) == 2  # the header and the image


def test_a_source_that_needs_tensorflow_is_one_line_without_it(tmp_path):
  result = _launch('launch/train.py', f'--config={ROOT}/configs/cifar100_lt.py:100', f'--workdir={tmp_path}')
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      'error: a tfds source (data.name=cifar10, cifar100, imagenet_lt, i_naturalist2018, or the embedded set '
      'streamed) needs TensorFlow, which is not installed here: pip install tensorflow-cpu (requirements.txt has '
      'it). Images kept in memory (the embedded set, an image folder with data.pipeline=device) need neither '
      'TensorFlow nor tensorflow-datasets.']
