from .depthwise import depthwise_nhwc, depthwise_nhwc_native, depthwise_path

__all__ = ['depthwise_nhwc', 'depthwise_nhwc_native', 'depthwise_path']
