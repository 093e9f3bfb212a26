"""The convolutional parts of Mask R-CNN + FPN as MindSpore cells: MMDetection 2.11's FPN,
RPNHead, Shared2FCBBoxHead and FCNMaskHead, with MMDetection's parameter names (so official
checkpoints load key for key) and initialisation.

Each head returns its raw outputs (logits, deltas) and nothing else: decoding, NMS and target
assignment work on those outputs outside the cells, so losses can be added later without
changing the heads. No Python control flow depends on tensor values: every cell compiles in
graph mode.
"""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common import initializer as init

from ...ops import conv2d, conv2d_relu, deconv_relu


def _he_fan_out():
    return init.HeNormal(mode='fan_out', nonlinearity='relu')


class Conv2d(nn.Cell):
    """A k x k convolution (stride 1, zero padding k // 2, with bias), then ReLU when ``relu``,
    on channels-last data, with PyTorch's parameter layout (weight (out, in, k, k), bias (out,)):
    ``mindcoat.ops.conv2d``."""

    def __init__(self, in_channels, out_channels, kernel_size, weight_init=None, relu=False):
        super().__init__()
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = Parameter(init.initializer(weight_init or _he_fan_out(), shape,
                                                 ms.float32))
        self.bias = Parameter(init.initializer('zeros', (out_channels,), ms.float32))
        self.relu = relu

    def construct(self, x):
        """(B, H, W, in) -> (B, H, W, out)."""
        if self.relu:
            return conv2d_relu(x, self.weight, self.bias)
        return conv2d(x, self.weight, self.bias)


class Deconv2x2(nn.Cell):
    """ReLU(ConvTranspose2d(kernel 2, stride 2)) on channels-last data, PyTorch's parameter
    layout (weight (in, out, 2, 2), bias (out,)): ``mindcoat.ops.deconv_relu``."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.weight = Parameter(init.initializer(_he_fan_out(), (in_channels, out_channels, 2, 2),
                                                 ms.float32))
        self.bias = Parameter(init.initializer('zeros', (out_channels,), ms.float32))

    def construct(self, x):
        """(B, H, W, in) -> (B, 2H, 2W, out)."""
        return deconv_relu(x, self.weight, self.bias)


def _nhwc(x):
    return x.transpose(0, 2, 3, 1)


def _nchw(x):
    return x.transpose(0, 3, 1, 2)


class ConvModule(nn.Cell):
    """mmcv's ConvModule without norm: ``conv`` (with bias), then ReLU when ``relu``;
    channels-last."""

    def __init__(self, in_channels, out_channels, kernel_size, relu=False, weight_init=None):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, weight_init, relu)

    def construct(self, x):
        return self.conv(x)


def _upsample2x(x):
    """Nearest-neighbour doubling of both spatial axes (channels-last). FPN upsamples each level
    to the size of the one below; with CoaT's inputs (multiples of 32) that is always exactly
    twice."""
    b, h, w, c = x.shape
    x = ops.broadcast_to(x.reshape(b, h, 1, w, 1, c), (b, h, 2, w, 2, c))
    return x.reshape(b, h * 2, w * 2, c)


class FPN(nn.Cell):
    """Lateral 1x1 convs, top-down nearest upsampling and addition, 3x3 output convs; extra
    levels by max_pool(kernel 1, stride 2) of the last output (Mask R-CNN's P6)."""

    def __init__(self, in_channels, out_channels=256, num_outs=5):
        super().__init__()
        xavier = init.XavierUniform()
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.lateral_convs = nn.CellList([ConvModule(c, out_channels, 1, weight_init=xavier)
                                          for c in in_channels])
        self.fpn_convs = nn.CellList([ConvModule(out_channels, out_channels, 3,
                                                 weight_init=xavier) for _ in in_channels])

    def construct(self, inputs):
        """The backbone's NCHW maps -> num_outs channels-last levels (P2 ... P6), (B, h, w, C):
        the layout the RPN head's convolutions and the host-side RoIAlign read."""
        laterals = ()
        for i in range(self.num_ins):
            laterals = laterals + (self.lateral_convs[i](_nhwc(inputs[i])),)
        merged = (laterals[-1],)
        for i in range(self.num_ins - 1, 0, -1):
            merged = (laterals[i - 1] + _upsample2x(merged[0]),) + merged
        outs = ()
        for i in range(self.num_ins):
            outs = outs + (self.fpn_convs[i](merged[i]),)
        for _ in range(self.num_outs - self.num_ins):
            outs = outs + (outs[-1][:, ::2, ::2, :],)
        return outs


class RPNHead(nn.Cell):
    """Shared 3x3 conv + ReLU, then per level 1x1 objectness logits (one per anchor, sigmoid)
    and 1x1 deltas (4 per anchor, channel a * 4 + j)."""

    def __init__(self, in_channels=256, feat_channels=256, num_anchors=3):
        super().__init__()
        normal = init.Normal(sigma=0.01)
        self.rpn_conv = Conv2d(in_channels, feat_channels, 3, normal, relu=True)
        self.rpn_cls = Conv2d(feat_channels, num_anchors, 1, normal)
        self.rpn_reg = Conv2d(feat_channels, num_anchors * 4, 1, normal)

    def construct(self, feats):
        """Channels-last levels -> (logits (B, A, h, w), deltas (B, 4A, h, w)) per level."""
        cls_scores = ()
        bbox_preds = ()
        for x in feats:
            x = self.rpn_conv(x)
            cls_scores = cls_scores + (_nchw(self.rpn_cls(x)),)
            bbox_preds = bbox_preds + (_nchw(self.rpn_reg(x)),)
        return cls_scores, bbox_preds


class Shared2FCBBoxHead(nn.Cell):
    """RoI features (k, 7, 7, C) (channels-last, as RoIAlign gives them) flattened in
    MMDetection's (C, 7, 7) order, two shared fc + ReLU, then class logits (k, num_classes + 1,
    background last) and class-specific deltas (k, 4 * num_classes)."""

    def __init__(self, in_channels=256, roi_size=7, fc_channels=1024, num_classes=80,
                 num_shared_fcs=2):
        super().__init__()
        xavier = init.XavierUniform()
        dims = [in_channels * roi_size * roi_size] + [fc_channels] * num_shared_fcs
        self.shared_fcs = nn.CellList([nn.Dense(dims[i], dims[i + 1], weight_init=xavier,
                                                bias_init='zeros')
                                       for i in range(num_shared_fcs)])
        self.fc_cls = nn.Dense(fc_channels, num_classes + 1, weight_init=init.Normal(0.01),
                               bias_init='zeros')
        self.fc_reg = nn.Dense(fc_channels, num_classes * 4, weight_init=init.Normal(0.001),
                               bias_init='zeros')
        self.relu = nn.ReLU()

    def construct(self, x):
        x = _nchw(x).reshape(x.shape[0], -1)  # NCHW order, as the fc weights expect
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Cell):
    """RoI features (k, 14, 14, C) channels-last: 3x3 convs + ReLU, a 2x2 stride-2 deconv + ReLU,
    and a 1x1 conv to per-class mask logits (k, num_classes, 28, 28)."""

    def __init__(self, in_channels=256, conv_channels=256, num_convs=4, num_classes=80):
        super().__init__()
        self.convs = nn.CellList([ConvModule(in_channels if i == 0 else conv_channels,
                                             conv_channels, 3, relu=True)
                                  for i in range(num_convs)])
        self.upsample = Deconv2x2(conv_channels, conv_channels)  # ReLU included
        self.conv_logits = Conv2d(conv_channels, num_classes, 1)

    def construct(self, x):
        for conv in self.convs:
            x = conv(x)
        return _nchw(self.conv_logits(self.upsample(x)))


class RoIHead(nn.Cell):
    """StandardRoIHead's parameters: ``bbox_head`` and ``mask_head`` (the RoI pooling between
    them and the FPN is host-side, ``mindcoat.ops.detection``)."""

    def __init__(self, bbox_head, mask_head):
        super().__init__()
        self.bbox_head = bbox_head
        self.mask_head = mask_head
