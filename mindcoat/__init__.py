"""mindcoat: CoaT (Co-Scale Conv-Attentional Image Transformers) for MindSpore."""
__version__ = '0.1.0'

from .factory import create_detector, create_model  # noqa: E402
from .models import list_models  # noqa: E402
from .models.detection import list_detectors  # noqa: E402

__all__ = ['create_detector', 'create_model', 'list_detectors', 'list_models', '__version__']
