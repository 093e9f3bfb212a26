"""CoaT as MindSpore Cells: the eight published variants as data (``registry``), their cells
(``coat``, ``layers``) and the builder. Imports only ``mindcoat.ops``: weights are loaded a layer
above (``mindcoat.weights``, ``mindcoat.create_model``)."""
from .builder import ARCH_ARGS, build_coat
from .coat import CoaT
from .registry import ARCHS, DATA_CONFIGS, PRETRAINED_FILES, PUBLISHED_TOP1, list_models

__all__ = ['ARCH_ARGS', 'ARCHS', 'CoaT', 'DATA_CONFIGS', 'PRETRAINED_FILES', 'PUBLISHED_TOP1',
           'build_coat', 'list_models']
