"""Long-tailed data: profiles, Data Balanced Review, sources (tfds, image folder, embedded), pipelines."""

from bwlm_jax.data.long_tail import (FEW_BELOW, MANY_ABOVE, SHOT_GROUPS, balanced_review_counts,
                                     long_tail_counts, shot_groups)
from bwlm_jax.data.load import DATASETS, load_dataset, sizes_images, stage_indices, stage_train_split
from bwlm_jax.data.splits import ArraySplit, LongTailDataset, StreamSplit
from bwlm_jax.data.tfds_source import DatasetNotPreparedError
