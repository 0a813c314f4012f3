"""Development check, not part of the suite: an export of a ViT trained with data.eval_transform=source, loaded
into timm and fed timm's own evaluation transform (the one its sidecar records), gives predict.py's probabilities.
Needs two interpreters (one with torch and timm); they exchange files in DIR.

  TORCH_PY tests/data/compare_export_transform.py weights DIR             # DeiT-S weights (random) + timm's config.json
  python   tests/data/compare_export_transform.py train DIR IMAGE_ROOT    # stage 2 on them, export, predict.py's CSV
  TORCH_PY tests/data/compare_export_transform.py torch DIR               # timm on the export: probabilities compared

IMAGE_ROOT: a small image folder (ROOT/train|val|test/<class>/). The predicted images are the test images cut to
non-square shapes (48 x 64 and 64 x 40), so that the shorter-side resize and the centre crop matter.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np

MODEL, TIMM_NAME = 'deit_small_patch16', 'deit_small_patch16_224'


def weights_side(folder: str) -> None:
  import safetensors.torch
  import timm
  import torch
  torch.manual_seed(0)
  model = timm.create_model(TIMM_NAME, pretrained=False)
  safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                              os.path.join(folder, 'model.safetensors'))
  cfg = model.pretrained_cfg
  json.dump({'architecture': TIMM_NAME, 'pretrained_cfg': {key: cfg[key] for key in (
      'interpolation', 'crop_pct', 'mean', 'std')}}, open(os.path.join(folder, 'config.json'), 'w'))
  print(f'{folder}: {TIMM_NAME} with its pretrained_cfg: {cfg["interpolation"]}, crop_pct {cfg["crop_pct"]}')


def train_side(folder: str, root: str) -> None:
  from PIL import Image
  images = os.path.join(folder, 'images')
  os.makedirs(images, exist_ok=True)
  for c in sorted(os.listdir(os.path.join(root, 'test'))):
    for i, name in enumerate(sorted(os.listdir(os.path.join(root, 'test', c)))[:2]):
      image = Image.open(os.path.join(root, 'test', c, name)).convert('RGB')
      image.crop((0, 0, 48, 64) if i == 0 else (0, 10, 64, 50)).save(os.path.join(images, f'{c}_{i}.png'))
  workdir = os.path.join(folder, 'run')
  config = [f'--config=configs/pretrained_folder.py:{root},{os.path.join(folder, "model.safetensors")},{MODEL}',
            '--config.data.eval_transform=source', '--config.stage2.select=none']
  subprocess.run([sys.executable, 'launch/train.py', *config, f'--workdir={workdir}'], check=True)
  subprocess.run([sys.executable, 'launch/export.py', f'--workdir={workdir}',
                  f'--output={os.path.join(folder, "export.safetensors")}'], check=True)
  subprocess.run([sys.executable, 'launch/predict.py', f'--workdir={workdir}', f'--images={images}', '--top_k=3',
                  f'--output={os.path.join(folder, "predict.csv")}'], check=True)


def torch_side(folder: str) -> None:
  import safetensors.torch
  import timm
  import torch
  from PIL import Image
  sidecar = json.load(open(os.path.join(folder, 'export.safetensors.json')))
  model = eval(sidecar['pytorch'], {'timm': timm}).eval()  # the class the sidecar names
  model.load_state_dict(safetensors.torch.load_file(os.path.join(folder, 'export.safetensors')), strict=True)
  transform = timm.data.create_transform(input_size=sidecar['image_size'], is_training=False,
                                         interpolation=sidecar['eval_transform']['interpolation'],
                                         crop_pct=sidecar['eval_transform']['crop_pct'], mean=sidecar['mean'],
                                         std=sidecar['std'])
  rows = list(csv.reader(open(os.path.join(folder, 'predict.csv'))))[1:]
  worst, same = 0.0, 0
  for row in rows:
    with torch.no_grad():
      probabilities = model(transform(Image.open(row[0]).convert('RGB'))[None]).softmax(-1)[0].numpy()
    ours = {name: float(p) for name, p in zip(row[1::2], row[2::2])}
    theirs = {sidecar['class_names'][c]: float(probabilities[c]) for c in np.argsort(-probabilities)[:3]}
    same += list(ours) == list(theirs)
    worst = max(worst, max(abs(ours[name] - float(probabilities[sidecar['class_names'].index(name)]))
                           for name in ours))
  print(f'{len(rows)} images: top-3 classes equal for {same}; max |probability difference| {worst:.2e} '
        f'(transform {sidecar["eval_transform"]}, torch {torch.__version__}, timm {timm.__version__})')


if __name__ == '__main__':
  side, directory = sys.argv[1], sys.argv[2]
  os.makedirs(directory, exist_ok=True)
  {'weights': lambda: weights_side(directory), 'train': lambda: train_side(directory, sys.argv[3]),
   'torch': lambda: torch_side(directory)}[side]()
