from .depthwise import depthwise_nhwc, depthwise_nhwc_native, depthwise_path
from .gelu import Gelu
from .patch import patch_conv

__all__ = ['depthwise_nhwc', 'depthwise_nhwc_native', 'depthwise_path', 'Gelu', 'patch_conv']
