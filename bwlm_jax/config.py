"""The base experiment config, its stages and its validation.

Files under `configs/` start from `base_config` and override what differs. Every default names its
source: the paper (section 4.2), the reference code it builds on, or our choice where the paper is
silent. `validate_config` runs once, at the start of a run, before anything is read or written.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict
import jax

from bwlm_jax import head_setting, losses, selection
from bwlm_jax.runtime import process_setup
from bwlm_jax import stages as stages_lib
from bwlm_jax.data.randaugment import MAX_MAGNITUDE as RANDAUGMENT_MAX_MAGNITUDE
from bwlm_jax.models.bundle import TEST_VIEWS
from bwlm_jax.models.head import HEAD_KINDS
from bwlm_jax.models.registry import DTYPE_NAMES, MODEL_NAMES, family_of
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax import weights
from bwlm_jax.data.load import sizes_images
from bwlm_jax.text import zero_shot


POOLS = ('token', 'avg')  # model.pool: a family says which it takes (`models/family.py`)
# What a backbone stage trains of its backbone (naive.tune, stage1.tune): `train/trainable.py`.
TUNE_MODES = ('full', 'bias', 'last', 'head', 'lora', 'adapter')
# How a backbone stage's head starts (naive.head_init, stage1.head_init): `train/state.py`.
HEAD_INITS = ('random', 'class_means', 'stage2_head', 'text')
# Who draws a backbone stage's batches (naive.sampler, stage1.sampler): `data/sampling.sampler_tables`.
SAMPLERS = ('uniform', 'square_root', 'class_balanced', 'progressive')

def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Which models to train, in order: 'naive' (one-stage CE on the whole long tail), 'stage1'
  # (CE on the head classes) and 'stage2' (new head on the rebalanced set, backbone frozen).
  config.stages = 'naive,stage1,stage2'

  config.data = _data_config()
  config.model = ml_collections.ConfigDict()
  # models.MODEL_NAMES: ResNet-8/20/32 (CIFAR), ResNet-10..152, ResNeXt-50, EfficientNet-Lite0..4, timm's ViT,
  # DeiT and DINOv2 (LayerScale, registers) and CLIP's image tower (QuickGELU for OpenAI's weights).
  config.model.name = 'resnet32'
  config.model.dtype = 'float32'  # Compute dtype; parameters and optimizer state stay float32.
  # timm ViTs: features of the class token ('token') or the patch tokens' mean ('avg', timm's fc_norm).
  config.model.pool = 'token'
  # CLIP: features in the image-text embedding (after `proj`: 512 for B/32 and B/16, 768 for L/14), else
  # the tower's width before it (768, 1024).
  config.model.projection = True
  # ViTs, for light fine-tuning (naive.tune / stage1.tune = 'lora' | 'adapter'): the rank of LoRA beside
  # every attention projection and the width of an AdaptFormer bottleneck beside every MLP; 0 = none.
  config.model.lora_rank = 0
  config.model.adapter_dim = 0
  # The classifier head: 'linear' (the paper's), or 'cosine' (LIFT's: normalised features and class weights,
  # logits scaled by head_scale, 25 as LIFT; weight decay then only shrinks the weights' norms: models/head.py).
  config.model.head = 'linear'
  config.model.head_scale = 25.0
  # Start the backbone of naive and stage 1 from pretrained weights, and offer it frozen to stage 2
  # (stage2.backbone=pretrained): a weights file of model.name in its source's layout (torchvision/timm,
  # open_clip, efficientnet-lite-pytorch; .safetensors, .npz; .pth/.pt with PyTorch) or a finished workdir
  # (WORKDIR = its naive backbone, WORKDIR:stage1). None = random init.
  config.model.init_from = config_dict.placeholder(str)
  # CLIP's text side (head_init='text': the head starts as the zero-shot classifier, text/zero_shot.py): the whole
  # CLIP file whose text tower is read (None: model.init_from), its tokenizer (None: the
  # bpe_simple_vocab_16e6.txt.gz or tokenizer.json beside that file), and the prompts: one template with {}
  # (LIFT's single template by default) or a .txt file of templates, one a line, whose embeddings are averaged.
  config.model.text_from = config_dict.placeholder(str)
  config.model.tokenizer = config_dict.placeholder(str)
  config.model.prompts = 'a photo of a {}.'

  config.batch_size = 64  # Paper section 4.2.
  config.eval_batch_size = 500

  # One-stage cross-entropy baseline ("naive" rows of the paper's tables).
  config.naive = _backbone_stage(epochs=320, learning_rate=0.01, weight_decay=5e-3)
  # Stage 1: CE on the head half. Paper: 320 epochs in all, SGD 0.9, cosine 0.01 -> 0; not split
  # between stages. Our split: 310 for stage 1, whose weight decay 5e-3 is Alshammari et al.'s (2022),
  # which the paper says it follows; stage 2 is chosen on validation (below).
  config.stage1 = _backbone_stage(epochs=310, learning_rate=0.01, weight_decay=5e-3)
  config.stage2 = _stage2_config()
  # Another run's workdir (or checkpoint directory) that holds stage 2's backbone; None = this run.
  config.stage1_checkpoint = config_dict.placeholder(str)

  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.log_every_steps = 50
  config.eval_every_epochs = 0  # > 0: log test accuracy every this many epochs (training curves).
  # Resume even if the workdir's saved config differs in fields that change the result.
  config.allow_config_change = False
  return config


def _data_config() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.name = 'embedded'  # embedded | cifar10 | cifar100 | imagenet_lt | i_naturalist2018 | folder | lists
  data.imbalance_factor = config_dict.placeholder(float)  # None keeps a natural tail.
  # n_max of the profile; None = the smallest per-class count of the balanced source (500 on CIFAR-100).
  data.max_count = config_dict.placeholder(int)
  data.subset_seed = 0  # Which images the long-tail profile keeps (and, offset, the stage-2 review).
  data.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default.
  data.download = True
  data.folder = config_dict.placeholder(str)  # ROOT for data.name='folder' (or 'lists').
  # data.name='lists': list files of '<path under data.folder> <label>' lines (Places-LT's form); val optional.
  data.list_files = ml_collections.ConfigDict(
      {split: config_dict.placeholder(str) for split in ('train', 'val', 'test')})
  data.image_size = 32  # Folder images are resized to this; the stream pipeline crops to it.
  data.pipeline = 'auto'  # auto | device (arrays on device) | stream (tf.data).
  data.stream_above = 50_000  # auto: folders with more training images than this stream.
  data.augment = True  # Pad-4 crop + flip (device) or random-resized crop + flip (stream).
  # Validation split for sources made long-tailed here (CIFAR, embedded, folders with an IF) that have
  # none of their own: this many images per class from those the profile leaves unused (the training
  # counts stay the standard ones). 20 per class: 2,000 images on CIFAR-100, as many as Tiny-ImageNet-LT's
  # own val split per class. 0 = none. ImageNet-LT and folders with ROOT/val/ use their own split.
  data.val_per_class = 20
  # Input normalisation: 'dataset' (the training set's per-channel mean and std), 'imagenet' (ImageNet's
  # mean and std), or 'auto': with a weights file in model.init_from, the input those weights expect (from
  # the metadata beside the file where there is some, else the network's convention: ImageNet's mean and
  # std for the ResNets, DeiT and DINOv2, [-1, 1] for timm's ViTs and EfficientNet-Lite, CLIP's own for
  # CLIP; `weights.input_statistics`), else dataset.
  data.normalize = 'auto'
  # What the classes are called in words, for CLIP's text tower: None = the source's label names (folder names,
  # CIFAR's and tfds's names), or a file mapping them to words (`LABEL<TAB>WORDS` lines as ImageNet's words.txt,
  # or a JSON object; text/classes.py), which ImageNet-LT's and Tiny-ImageNet's WordNet ids need.
  data.class_names_file = config_dict.placeholder(str)
  # Test-time ensembling on the evaluation splits (val, test; prediction too): 'none', 'flip' (the image and its
  # mirror), 'five_crop' (LIFT's: resized to 248/224 of its side, four corner and the centre crop), 'ten_crop'
  # (those and their mirrors); the views' logits averaged. Training images are never ensembled.
  data.test_views = 'none'
  # How a val or test image becomes the model's input (data/eval_transform.py): 'resize' (the pipeline's own: the
  # whole image resized to image_size in memory; streamed, the shorter side to 256/224 of it and the centre
  # crop), 'source' (what the weights' source evaluates with, from the metadata beside model.init_from: timm's
  # interpolation and crop_pct, open_clip's), or INTERPOLATION:CROP_PCT (bilinear|bicubic, e.g. bicubic:0.9).
  data.eval_transform = 'resize'
  # Whether val and test may hold classes with no training image (a folder's test/ or val/ class folders absent
  # from train/): False = refused in one line (a misspelt folder is the usual cause); True = every class of any
  # split is a class of the model, reported apart as 'unseen'. Zero-shot CLIP and a head started from the text
  # (head_init='text') score such classes; a head trained on the images alone has nothing to learn them from.
  data.unseen_classes = False
  return data


def _stage2_config() -> ml_collections.ConfigDict:
  # Stage 2: a new head on the Data Balanced Review set. The head's fields (loss, alpha, beta, gamma,
  # weight_decay, learning_rate, epochs, backbone, train_set) and the sources of their defaults are those of
  # `head_setting.HeadSetting`; they train when nothing is selected (stage2.select below).
  head = head_setting.HeadSetting()
  stage2 = _stage_optim(head.epochs, head.learning_rate, head.weight_decay)  # with momentum, Nesterov, warm-up
  for field in head_setting.NAMES:
    stage2[field] = getattr(head, field)
  # 'zeros' or 'cb_prior' (bias -log(C - 1), Cui et al.'s init for sigmoid heads). Our choice: the two tie
  # on Tiny-ImageNet-LT's val split (docs/REPRODUCING.md), so the simpler one.
  stage2.head_bias_init = 'zeros'
  # Augmentation in stage 2 (stage 1 and naive use data.augment). Our choice: off, chosen on
  # Tiny-ImageNet-LT's val split (docs/REPRODUCING.md). Without it the frozen backbone's features are a
  # fixed function of each image: they are computed once and the heads train on them (cache_features;
  # the same heads as the full forward pass to float tolerance). How stage 2 is fed follows from these
  # two fields and where the data lives (`train/feeders.stage2_feed`, printed at the start of a run).
  stage2.augment = False
  stage2.cache_features = True
  # Class counts n_j of the balanced losses. 'stage2' (default): the rebalanced set stage 2 trains
  # on, the label distribution balanced softmax corrects for (Ren et al.'s derivation) and the
  # effective numbers CB weights are meant for. 'long_tail': the whole long-tailed set (n_j of the
  # paper's section 3.1); it over-corrects, because stage 2 does not see that distribution (chosen on
  # Tiny-ImageNet-LT's val split, docs/REPRODUCING.md).
  stage2.loss_counts = 'stage2'
  # 'uniform' over examples, or 'class_balanced' (a uniform class, then a uniform example: cRT).
  stage2.sampler = 'uniform'
  # MaxNorm (Alshammari et al. 2022): after each step, cap every class's weight-vector norm. None = off.
  stage2.max_norm = config_dict.placeholder(float)
  # Stage-2 settings chosen on the validation split: every combination of the grid's values trains as
  # one head of a single run (K heads at once, shared features), and the head with the best
  # validation score becomes the stage-2 model. 'auto' selects whenever there is a validation split
  # (else it trains the one setting above and says so), 'val' requires one, 'none' never selects.
  # The test split is never used to choose. A grid field left None keeps the stage-2 value above.
  # The default grid (72 heads) holds the paper's and Alshammari et al.'s settings (lr 0.01, lambda
  # 0.1, 10 epochs, alpha 0.1) and the region that won on Tiny-ImageNet-LT's val split (lr 0.1-0.3,
  # lambda 5e-4, 30 epochs); lambda stays > 0 so that the model is BWLM (BFS + weight decay).
  stage2.select = 'auto'
  stage2.select_metric = 'balanced_accuracy'  # mean per-class accuracy | accuracy
  stage2.grid = ml_collections.ConfigDict()
  stage2.grid.learning_rate = (0.01, 0.03, 0.1, 0.3)
  stage2.grid.epochs = (10, 30)
  stage2.grid.weight_decay = (5e-4, 5e-3, 0.1)
  stage2.grid.alpha = (0.1, 0.5, 0.9)
  # The frozen backbone is a grid dimension too (features cached once per backbone): the paper's stage-1
  # backbone (Data Balanced Review) and the naive one (all classes, CE). Our choice beyond the paper: on
  # every real set measured, a head on the naive backbone scored higher on validation than the same head
  # on the stage-1 one (docs/REPRODUCING.md); the paper's configuration stays a candidate, and a run that
  # trains no naive model leaves those candidates out (it says so). None keeps stage2.backbone.
  stage2.grid.backbone = ('stage1', 'naive')
  # The heads' training set is one too: e.g. ('review', 'long_tail'). None (default) keeps stage2.train_set,
  # the paper's Review set (the evidence for each: `HeadSetting.train_set`).
  for field in head_setting.GRID_FIELDS:  # a grid field without default values keeps stage2's value
    if field not in stage2.grid:
      stage2.grid[field] = config_dict.placeholder(tuple)
  return stage2


def streamed_224(config, model_name: str):
  """The recipe the big benchmarks share (ImageNet-LT, iNaturalist 2018, Places-LT): 224x224 images
  streamed with tf.data, `model_name`, evaluation in batches of 250, a checkpoint every 2,000 steps."""
  config.data.image_size = 224
  config.data.pipeline = 'stream'
  config.model.name = model_name
  config.eval_batch_size = 250
  config.checkpoint_every_steps = 2000
  return config


def _stage_optim(epochs: int, learning_rate: float, weight_decay: float) -> ml_collections.ConfigDict:
  """SGD with momentum 0.9 and a cosine schedule from `learning_rate` to 0 (paper section 4.2)."""
  stage = ml_collections.ConfigDict()
  stage.epochs = epochs
  stage.learning_rate = learning_rate
  stage.momentum = 0.9
  stage.nesterov = False
  stage.weight_decay = weight_decay
  stage.warmup_epochs = 0
  return stage


def _backbone_stage(epochs: int, learning_rate: float, weight_decay: float) -> ml_collections.ConfigDict:
  """A backbone stage (naive, stage 1): SGD as `_stage_optim`, what of the backbone trains, and its loss."""
  stage = _stage_optim(epochs, learning_rate, weight_decay)
  # What of the backbone trains (train/trainable.py): 'full' (everything, the paper's stages), or light
  # fine-tuning of a pretrained backbone: 'bias' (BitFit), 'last' (the last stage / blocks), 'head' (a
  # linear probe end to end). BatchNorm runs in inference mode except in 'full'.
  stage.tune = 'full'
  # The loss: 'ce' (the paper's), or one of the balanced family with stage 2's default alpha, beta and
  # gamma (`head_setting.HeadSetting`), over this stage's training counts.
  stage.loss = 'ce'
  # The head's start: 'random' (Flax's lecun-normal Dense, the paper's stages), 'class_means' (each
  # class's mean feature of the stage's training set through the starting backbone, L2-normalised; bias 0:
  # a nearest-class-mean classifier to fine-tune from, for a pretrained backbone), 'stage2_head' (LP-FT, Kumar
  # et al. 2022: the balanced head stage 2 trained on the frozen features of model.init_from, read from
  # head_from: a workdir's finished stage 2, or head K of a grid checkpoint as 'DIRECTORY:K') or 'text' (CLIP:
  # the zero-shot classifier of the classes' prompts, LIFT's semantic initialisation; model.text_from,
  # model.tokenizer, model.prompts, data.class_names_file).
  stage.head_init = 'random'
  stage.head_from = ''
  # Who draws the batches: 'uniform' (each example once per epoch, the paper's), 'square_root',
  # 'class_balanced' or 'progressive' (data/sampling.py; images in memory only).
  stage.sampler = 'uniform'
  # Soft targets (train/mixing.py), all off as in the paper: mixup (Zhang et al. 2018) and CutMix (Yun et
  # al. 2019) with lambda ~ Beta(alpha, alpha) per batch (both > 0: one of them per batch at even odds),
  # mixing mix_prob of the batches; label smoothing eps (Szegedy et al. 2016). Common settings: mixup 0.2-0.8,
  # CutMix 1.0 (MiSLAS, GLMC), label smoothing 0.1. Not yet chosen on real data here.
  stage.mixup_alpha = 0.0
  stage.cutmix_alpha = 0.0
  stage.mix_prob = 1.0
  stage.label_smoothing = 0.0
  # Deferred re-weighting (Cao et al. 2019, LDAM-DRW; train/mixing.Reweighting): from this epoch on, each
  # example's loss weighs its class's class-balanced weight (Cui et al., beta drw_beta; LDAM-DRW's code uses
  # epoch 160 of 200 and 0.9999). 0 = off, the paper's.
  stage.drw_epoch = 0
  stage.drw_beta = 0.9999
  # RandAugment (Cubuk et al. 2020; data/randaugment.py): randaugment_layers operations per training image
  # after the crop and flip, at magnitude randaugment_magnitude in [0, 10]. 0 layers = off, the paper's;
  # PaCo's ImageNet-LT recipe and NCL use 2 layers at magnitude 10 (timm's default magnitude is 9).
  stage.randaugment_layers = 0
  stage.randaugment_magnitude = 9.0
  return stage


def parse_stages(config) -> tuple[stages_lib.Stage, ...]:
  """config.stages as stages in training order; an error for an empty or unknown entry."""
  names = tuple(s.strip() for s in config.stages.split(',') if s.strip())
  unknown = [s for s in names if s not in stages_lib.NAMES]
  if not names or unknown:
    raise UsageError(f'config.stages={config.stages!r}: expected a comma-separated subset of '
                     f'{",".join(stages_lib.NAMES)}.')
  return tuple(stage for stage in stages_lib.STAGES if stage.name in names)


def _validate_model(config) -> None:
  """config.model's checks, each asked of the model's family (and the image size a ViT's patches must tile)."""
  family = family_of(config.model.name)
  if config.model.pool not in POOLS:
    raise UsageError(f'model.pool must be one of {POOLS}, got {config.model.pool!r}.')
  if config.model.pool not in family.pools:
    raise UsageError(f"model.pool={config.model.pool!r} is for timm's ViTs; {config.model.name} pools its own way.")
  for field in ('lora_rank', 'adapter_dim'):
    if not isinstance(config.model[field], int) or config.model[field] < 0:
      raise UsageError(f'model.{field} must be a whole number >= 0, got {config.model[field]!r}.')
    if config.model[field] and field not in family.added_modules:
      raise UsageError(f'model.{field} adds {"LoRA" if field == "lora_rank" else "adapters"} to the ViTs\' '
                       f'attention and MLPs; {config.model.name} has none.')
  patch = family.patch_size(config.model.name)
  if patch and config.data.image_size % patch:
    lower = config.data.image_size // patch * patch
    raise UsageError(f'data.image_size={config.data.image_size} is not a multiple of {config.model.name}\'s patch '
                     f'size {patch}: use {lower or patch} or {lower + patch}.')
  if config.model.head not in HEAD_KINDS:
    raise UsageError(f'model.head must be one of {HEAD_KINDS}, got {config.model.head!r}.')
  if not isinstance(config.model.head_scale, (int, float)) or not config.model.head_scale > 0:
    raise UsageError(f'model.head_scale must be > 0 (the cosine head\'s logit scale), got {config.model.head_scale!r}.')
  if config.model.dtype not in DTYPE_NAMES:
    raise UsageError(f'model.dtype must be one of {DTYPE_NAMES}, got {config.model.dtype!r}.')


def _validate_backbone_stage(config, stage: str) -> None:
  """A backbone stage's checks: its tuning mode (and what the model must have for it), loss, optimizer."""
  cfg = config[stage]
  if cfg.tune not in TUNE_MODES:
    raise UsageError(f'{stage}.tune must be one of {TUNE_MODES}, got {cfg.tune!r}.')
  needs = {'lora': 'lora_rank', 'adapter': 'adapter_dim'}.get(cfg.tune)
  if cfg.tune not in family_of(config.model.name).tune_modes:
    raise UsageError(f'{stage}.tune={cfg.tune!r} tunes a ViT\'s attention or MLPs; {config.model.name} has '
                     "none: use 'bias', 'last', 'head' or 'full'.")
  if needs and not config.model[needs]:
    raise UsageError(f'{stage}.tune={cfg.tune!r} trains what model.{needs} adds, which is 0: set '
                     f'--config.model.{needs}={8 if needs == "lora_rank" else 64}.')
  if cfg.loss not in losses.LOSSES:
    raise UsageError(f'{stage}.loss must be one of {losses.LOSSES}, got {cfg.loss!r}.')
  if cfg.head_init not in HEAD_INITS:
    raise UsageError(f'{stage}.head_init must be one of {HEAD_INITS}, got {cfg.head_init!r}.')
  if (cfg.head_init == 'stage2_head') != bool(cfg.head_from):
    raise UsageError(f"{stage}.head_init='stage2_head' reads its head from {stage}.head_from (a workdir with a "
                     f'finished stage 2 on model.init_from): give both or neither; got head_init='
                     f'{cfg.head_init!r}, head_from={cfg.head_from!r}.')
  if cfg.head_init == 'text':
    zero_shot.check(config.model, config.data.class_names_file)
  if cfg.head_from and not config.model.init_from:
    raise UsageError(f'{stage}.head_from is a head trained on the frozen features of model.init_from, which '
                     'is not set.')
  if cfg.sampler not in SAMPLERS:
    raise UsageError(f'{stage}.sampler must be one of {SAMPLERS}, got {cfg.sampler!r}.')
  for field in ('mixup_alpha', 'cutmix_alpha'):
    if not isinstance(cfg[field], (int, float)) or cfg[field] < 0:
      raise UsageError(f'{stage}.{field} must be >= 0 (0 = off), got {cfg[field]!r}.')
  if not 0 <= cfg.mix_prob <= 1 or not 0 <= cfg.label_smoothing < 1:
    raise UsageError(f'{stage}: mix_prob must be in [0, 1] and label_smoothing in [0, 1); got {cfg.mix_prob}, '
                     f'{cfg.label_smoothing}.')
  # 0 epochs: the stage's model is its start, untrained (zero-shot CLIP, nearest class mean, the linear probe).
  if cfg.epochs == 0 and cfg.head_init == 'random':
    raise UsageError(f'{stage}.epochs=0 keeps the starting model untrained, which with head_init=random is a random '
                     f"head: give epochs >= 1, or a head start ('text', 'class_means', 'stage2_head').")
  if not isinstance(cfg.epochs, int) or cfg.epochs < 0 or cfg.learning_rate <= 0 or cfg.weight_decay < 0:
    raise UsageError(f'{stage}: epochs must be a whole number >= 1 (0 with a head start), learning_rate > 0 and '
                     f'weight_decay >= 0; got {cfg.epochs}, {cfg.learning_rate}, {cfg.weight_decay}.')
  if (not isinstance(cfg.randaugment_layers, int) or cfg.randaugment_layers < 0
      or not 0 <= cfg.randaugment_magnitude <= RANDAUGMENT_MAX_MAGNITUDE):
    raise UsageError(f'{stage}.randaugment_layers must be a whole number >= 0 (0 = off) and randaugment_magnitude '
                     f'in [0, {RANDAUGMENT_MAX_MAGNITUDE}]; got {cfg.randaugment_layers!r}, '
                     f'{cfg.randaugment_magnitude!r}.')
  if not isinstance(cfg.drw_epoch, int) or not 0 <= cfg.drw_epoch < max(cfg.epochs, 1) or not 0 < cfg.drw_beta < 1:
    raise UsageError(f'{stage}.drw_epoch must be a whole number in [0, {stage}.epochs) (0 = off) and drw_beta '
                     f'in (0, 1); got {cfg.drw_epoch!r}, {cfg.drw_beta!r}.')


def validate_config(config) -> None:
  """Every cheap check of a config, before any data is read or anything is written."""
  parse_stages(config)
  _validate_model(config)
  process_setup.check_compute_dtype(config.model.dtype)
  stage2 = config.stage2
  if config.data.eval_transform != 'resize':
    if not sizes_images(config.data):
      raise UsageError(f'data.eval_transform={config.data.eval_transform!r} applies to images resized to '
                       f'data.image_size (folders, image lists, streamed data); {config.data.name} is kept at its '
                       'own size.')
    weights.eval_transform_of(config)  # parsed, or the metadata beside the weights read
  if not isinstance(config.data.unseen_classes, bool):
    raise UsageError(f'data.unseen_classes must be True or False, got {config.data.unseen_classes!r}.')
  if config.data.test_views not in TEST_VIEWS:
    raise UsageError(f'data.test_views must be one of {TEST_VIEWS}, got {config.data.test_views!r}.')
  if config.data.normalize not in ('auto', 'dataset', 'imagenet'):
    raise UsageError(f"data.normalize must be 'auto', 'dataset' or 'imagenet', got {config.data.normalize!r}.")
  for field, allowed in (('sampler', ('uniform', 'class_balanced')), ('head_bias_init', ('zeros', 'cb_prior')),
                         ('loss_counts', ('long_tail', 'stage2'))):
    if stage2[field] not in allowed:
      raise UsageError(f'stage2.{field} must be one of {allowed}, got {stage2[field]!r}.')
  if stage2.max_norm is not None and stage2.max_norm <= 0:
    raise UsageError(f'stage2.max_norm must be > 0 (or None), got {stage2.max_norm}.')
  selection.validate(stage2)  # the head's fields (stage 2's epochs, learning rate, weight decay among them)
  for stage in stages_lib.BACKBONES:
    _validate_backbone_stage(config, stage)
  for field in ('checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps'):
    if not isinstance(config[field], int) or config[field] < 1:
      raise UsageError(f'{field} must be a whole number >= 1, got {config[field]!r}'
                       + (' (the finished checkpoint of every stage is always kept).' if field == 'keep_checkpoints'
                          else '.'))
  if config.eval_every_epochs < 0:
    raise UsageError(f'eval_every_epochs must be >= 0 (0: no training curves), got {config.eval_every_epochs}.')
  if config.data.image_size < 8:
    raise UsageError(f'data.image_size must be at least 8 pixels, got {config.data.image_size}.')
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] < 1 or config[field] % jax.device_count():
      over = f' of {jax.process_count()} processes' if jax.process_count() > 1 else ''
      raise UsageError(f'{field}={config[field]} must be a positive multiple of the {jax.device_count()} '
                       f'devices{over} (the global batch is split evenly between them).')
