"""Write a trained model (backbone + head) as a torchvision state dict, for PyTorch users.

  python launch/export.py --workdir=workdirs/quickstart --stage=stage2 --output=bwlm.safetensors

OUTPUT (.safetensors, never overwritten) loads into torchvision's class with strict=True:

  model = torchvision.models.resnet50(num_classes=C)
  model.load_state_dict(safetensors.torch.load_file('bwlm.safetensors'))

OUTPUT.json (also in the file's metadata) names the torchvision class, the class names and the input
preprocessing (image size, mean and std of [0, 1] pixels). The ImageNet ResNets (resnet10 .. resnet152,
resnext50) have a torchvision counterpart; the CIFAR ResNets (resnet8/20/32) have none and are refused.
The file is also what `--config.model.init_from` reads back (its fc is then dropped).
"""

from absl import flags

from bwlm_jax.runtime import cli, process_setup

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_STAGE = flags.DEFINE_string('stage', 'stage2', 'The finished model to export: naive, stage1 or stage2.')
_OUTPUT = flags.DEFINE_string('output', None, 'The .safetensors file to write.')
flags.mark_flags_as_required(['workdir', 'output'])


def main(argv):
  cli.no_arguments(argv)
  process_setup.start_process()
  from bwlm_jax.checkpoints import load_finished
  from bwlm_jax.predict import check_stage
  from bwlm_jax.weights import export_model
  check_stage(_STAGE.value, allow_best=False)
  variables, meta = load_finished(_WORKDIR.value, _STAGE.value)
  sidecar = export_model(variables, meta['config']['model']['name'], meta, _OUTPUT.value)
  print(f'{_OUTPUT.value}: the {_STAGE.value} model of {_WORKDIR.value} for {sidecar["pytorch"]}; '
        f'preprocessing and class names in {_OUTPUT.value}.json.')

