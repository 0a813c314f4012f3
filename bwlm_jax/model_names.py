"""The names a config may give `model.name` and `model.dtype`, apart from the models themselves so that a
config is checked without loading them (and the data pipeline they import)."""

MODELS = ('resnet8', 'resnet20', 'resnet32', 'resnet10', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152',
          'resnext50')
DTYPE_NAMES = ('float32', 'bfloat16')
