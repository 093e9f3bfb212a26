"""MindSpore operators for CoaT, each with a CPU fast path (see ``dispatch``) and a native
reference (``*_native``) used on Ascend/GPU and whenever the fast path does not apply."""
from .attention import factor_attention, factor_attention_crpe, factor_attention_native
from .conv import conv2d, conv2d_native, conv2d_relu, deconv_relu, deconv_relu_native
from .depthwise import conv_rel_pos_enc, conv_rel_pos_enc_native, depthwise_nhwc, \
    depthwise_nhwc_native, depthwise_path, depthwise_tokens, depthwise_tokens_native
from .droppath import scale_samples, scaled_add, scaled_add_native
from .gelu import Gelu
from .layernorm import LayerNormOp
from .linear import linear, linear_gelu, linear_native, linear_residual, mlp
from .patch import patch_conv, tokens_to_image, with_class_token
from .resize import cross_scale_sum, cross_scale_sum_native, resize_tokens_native

__all__ = ['conv2d', 'conv2d_native', 'conv2d_relu', 'conv_rel_pos_enc', 'conv_rel_pos_enc_native',
           'cross_scale_sum', 'cross_scale_sum_native', 'deconv_relu', 'deconv_relu_native',
           'depthwise_nhwc', 'depthwise_nhwc_native',
           'depthwise_path', 'depthwise_tokens', 'depthwise_tokens_native', 'factor_attention',
           'factor_attention_crpe', 'factor_attention_native', 'Gelu', 'LayerNormOp', 'linear',
           'linear_gelu', 'linear_native', 'linear_residual', 'mlp', 'patch_conv',
           'resize_tokens_native', 'scale_samples', 'scaled_add', 'scaled_add_native',
           'tokens_to_image', 'with_class_token']
