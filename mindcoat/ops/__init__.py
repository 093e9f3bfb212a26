from .depthwise import depthwise_nhwc, depthwise_nhwc_native, depthwise_path, depthwise_tokens, \
    depthwise_tokens_native
from .attention import factor_attention, factor_attention_native
from .bias import BiasAdd
from .gelu import Gelu
from .layernorm import LayerNormOp
from .patch import patch_conv

__all__ = ['depthwise_nhwc', 'depthwise_nhwc_native', 'depthwise_path', 'depthwise_tokens',
           'depthwise_tokens_native', 'Gelu', 'patch_conv',
           'factor_attention', 'factor_attention_native', 'LayerNormOp', 'BiasAdd']
