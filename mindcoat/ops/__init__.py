from .depthwise import depthwise_nhwc, depthwise_nhwc_native

__all__ = ['depthwise_nhwc', 'depthwise_nhwc_native']
