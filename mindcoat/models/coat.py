"""CoaT: Co-Scale Conv-Attentional Image Transformers (Xu et al., ICCV 2021, arXiv 2104.06399).

Numerically the official mlpc-ucsd/CoaT model. Parameter names are the official checkpoint keys
(patch_embed1.proj, cls_token1, cpe1.proj, crpe1.conv_list.0, serial_blocks1.0.factoratt_crpe.qkv,
parallel_blocks.0.mlp2, aggregate, head, ...). Activations stay in token layout (B, 1 + H*W, C)
throughout; the depthwise convolutions run channels-last on that layout directly.
"""
from mindspore import nn, ops

from ..ops import conv_rel_pos_enc, cross_scale_sum, depthwise_tokens, factor_attention_crpe, \
    linear_residual, patch_conv, tokens_to_image, with_class_token
from .layers import DepthwiseKernel, DropPath, LayerNorm, Linear, Mlp, trunc_normal, uniform_fan_in

# Relative position encoding: kernel size -> number of heads it covers (official default).
CRPE_WINDOW = {3: 2, 5: 3, 7: 3}
STRIDE = 32  # total downsampling; inputs must be a multiple of it


class PatchEmbed(nn.Cell):
    """Strided conv + LayerNorm (PyTorch's default eps 1e-5, as in the reference)."""

    def __init__(self, patch_size, in_channels, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size, has_bias=True)
        self.norm = LayerNorm(dim, eps=1e-5)

    def construct(self, x, grid=None):
        """An image (B, Cin, H, W), or the previous stage's tokens and their ``grid`` (H, W)."""
        # kernel == stride: on the CPU patch_conv runs this conv as one matmul over patches
        return self.norm(patch_conv(x, self.proj.weight, self.proj.bias, grid))


class ConvPosEnc(nn.Cell):
    """Convolutional position encoding: x + depthwise3x3(x) over the image tokens."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.proj = DepthwiseKernel(dim, kernel_size)

    def construct(self, x, h, w):
        # residual=True: x + conv(image tokens), class token passed on (no split/concat)
        return depthwise_tokens(x, h, w, (self.proj.weight,), (self.proj.bias,), True)


class ConvRelPosEnc(nn.Cell):
    """Convolutional relative position encoding: q * depthwise(v), a different kernel size per
    group of heads; zero for the class token. Reads q and v from the fused qkv (B, N, 3C)."""

    def __init__(self, head_dim, num_heads, window=None):
        super().__init__()
        window = window or CRPE_WINDOW
        if sum(window.values()) != num_heads:
            raise ValueError(f"crpe window {window} covers {sum(window.values())} heads, "
                             f"the attention has {num_heads}")
        self.conv_list = nn.CellList([DepthwiseKernel(heads * head_dim, k)
                                      for k, heads in window.items()])

    def kernels(self):
        """((weight, ...), (bias, ...)) of the head groups."""
        weights = ()
        biases = ()
        for conv in self.conv_list:
            weights = weights + (conv.weight,)
            biases = biases + (conv.bias,)
        return weights, biases

    def construct(self, qkv, h, w):
        weights, biases = self.kernels()
        return conv_rel_pos_enc(qkv, h, w, weights, biases)


class FactorAttnConvRelPosEnc(nn.Cell):
    """Factorized attention q (softmax(k)^T v) plus the conv relative position encoding.
    One fused qkv projection, as in the reference."""

    def __init__(self, dim, num_heads, crpe, drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = Linear(dim, dim * 3)
        self.proj = Linear(dim, dim)
        self.drop_rate = float(drop)
        self.proj_drop = nn.Dropout(p=drop) if drop > 0 else nn.Identity()
        self.crpe = crpe  # shared by the stage

    def construct(self, x, h, w, residual=None):
        """The attention branch, plus ``residual`` if given (added inside the output projection's
        GEMM when there is no dropout)."""
        qkv = self.qkv(x)
        # scale * q (softmax over tokens of k)^T v + crpe; on the CPU kernels on qkv's layout,
        # whose backward writes both gradients of qkv into one tensor
        weights, biases = self.crpe.kernels()
        x = factor_attention_crpe(qkv, h, w, weights, biases, self.num_heads)
        if self.training and self.drop_rate > 0:
            y = self.proj_drop(self.proj(x))
            return y if residual is None else residual + y
        if residual is None:
            return self.proj(x)
        return linear_residual(x, self.proj.weight, self.proj.bias, residual)


class SerialBlock(nn.Cell):
    def __init__(self, dim, num_heads, mlp_ratio, cpe, crpe, drop=0.0, drop_path=0.0):
        super().__init__()
        self.cpe = cpe  # shared by the stage
        self.norm1 = LayerNorm(dim)
        self.factoratt_crpe = FactorAttnConvRelPosEnc(dim, num_heads, crpe, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def construct(self, x, h, w):
        x = self.cpe(x, h, w)
        if self.training and self.drop_path.p > 0:
            x = self.drop_path(self.factoratt_crpe(self.norm1(x), h, w), x)
            return self.drop_path(self.mlp(self.norm2(x)), x)
        # without stochastic depth the residual adds run inside the output projections
        x = self.factoratt_crpe(self.norm1(x), h, w, x)
        return self.mlp(self.norm2(x), x)


class ParallelBlock(nn.Cell):
    """Scales 2-4 attend within themselves, then exchange information by resizing to each other's
    grids; one MLP (the reference's mlp2 = mlp3 = mlp4) serves the three scales."""

    def __init__(self, dims, num_heads, mlp_ratio, crpes, drop=0.0, drop_path=0.0):
        super().__init__()
        if not dims[1] == dims[2] == dims[3]:
            raise ValueError(f"parallel blocks need equal dims for scales 2-4, got {dims[1:]}")
        for s in (2, 3, 4):
            setattr(self, f'norm1{s}', LayerNorm(dims[s - 1]))
            setattr(self, f'factoratt_crpe{s}',
                    FactorAttnConvRelPosEnc(dims[s - 1], num_heads, crpes[s - 1], drop))
            setattr(self, f'norm2{s}', LayerNorm(dims[s - 1]))
        self.mlp2 = Mlp(dims[1], int(dims[1] * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def construct(self, x2, x3, x4, sizes):
        s2, s3, s4 = sizes
        cur2 = self.factoratt_crpe2(self.norm12(x2), s2[0], s2[1])
        cur3 = self.factoratt_crpe3(self.norm13(x3), s3[0], s3[1])
        cur4 = self.factoratt_crpe4(self.norm14(x4), s4[0], s4[1])
        # each scale plus the other two resized to its grid (the reference's order of terms)
        new2 = cross_scale_sum(cur2, s2, cur3, s3, cur4, s4)
        new3 = cross_scale_sum(cur3, s3, cur4, s4, cur2, s2)
        new4 = cross_scale_sum(cur4, s4, cur3, s3, cur2, s2)
        x2 = self.drop_path(new2, x2)
        x3 = self.drop_path(new3, x3)
        x4 = self.drop_path(new4, x4)
        if self.training and self.drop_path.p > 0:
            x2 = self.drop_path(self.mlp2(self.norm22(x2)), x2)
            x3 = self.drop_path(self.mlp2(self.norm23(x3)), x3)
            x4 = self.drop_path(self.mlp2(self.norm24(x4)), x4)
            return x2, x3, x4
        # without stochastic depth the residual adds run inside fc2
        return (self.mlp2(self.norm22(x2), x2), self.mlp2(self.norm23(x3), x3),
                self.mlp2(self.norm24(x4), x4))


class Aggregate(nn.Cell):
    """The reference's Conv1d(3, 1, kernel_size=1) over the three class tokens, kept with its
    PyTorch weight shape (1, 3, 1) so that checkpoints load unchanged."""

    def __init__(self, num_tokens=3):
        super().__init__()
        self.weight = uniform_fan_in((1, num_tokens, 1), num_tokens)
        self.bias = uniform_fan_in((1,), num_tokens)

    def construct(self, tokens):  # (B, 3, C) -> (B, C)
        return ops.matmul(self.weight.reshape(1, -1), tokens).squeeze(1) + self.bias


class CoaT(nn.Cell):
    """CoaT and CoaT-Lite. ``parallel_depth == 0`` gives CoaT-Lite (classifies from the last
    stage's class token); otherwise CoaT, whose head reads the class tokens of scales 2-4."""

    def __init__(self, embed_dims, serial_depths, parallel_depth=0, num_heads=8,
                 mlp_ratios=(4,) * 4, in_channels=3, num_classes=1000, patch_size=4,
                 drop_rate=0.0, drop_path_rate=0.0, crpe_window=None, features_only=False,
                 out_indices=(0, 1, 2, 3)):
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        self.parallel_depth = parallel_depth
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = tuple(out_indices)
        if features_only and not set(self.out_indices) <= {0, 1, 2, 3}:
            raise ValueError(f"out_indices must be drawn from 0-3, got {out_indices}")
        head_dims = [d // num_heads for d in embed_dims]
        crpes = []
        prev = in_channels
        for i, (dim, depth) in enumerate(zip(embed_dims, serial_depths), start=1):
            setattr(self, f'patch_embed{i}', PatchEmbed(patch_size if i == 1 else 2, prev, dim))
            setattr(self, f'cls_token{i}', trunc_normal((1, 1, dim)))
            # registered before the blocks, so the shared cells keep these names (see below)
            cpe = ConvPosEnc(dim)
            crpe = ConvRelPosEnc(head_dims[i - 1], num_heads, crpe_window)
            setattr(self, f'cpe{i}', cpe)
            setattr(self, f'crpe{i}', crpe)
            setattr(self, f'serial_blocks{i}', nn.CellList([
                SerialBlock(dim, num_heads, mlp_ratios[i - 1], cpe, crpe, drop_rate, drop_path_rate)
                for j in range(depth)]))
            crpes.append(crpe)
            prev = dim
        # the reference applies one stochastic-depth rate to every block (no linear decay rule)
        self.parallel_blocks = nn.CellList([
            ParallelBlock(embed_dims, num_heads, mlp_ratios[1], crpes, drop_rate, drop_path_rate)
            for j in range(parallel_depth)])
        if not features_only:
            if parallel_depth:
                self.norm2 = LayerNorm(embed_dims[1])
                self.norm3 = LayerNorm(embed_dims[2])
                self.aggregate = Aggregate(3)
            self.norm4 = LayerNorm(embed_dims[3])
            self.head = Linear(embed_dims[3], num_classes) if num_classes else nn.Identity()
        # A cell shared by several parents is renamed by every assignment; restore each
        # parameter's name to its first (reference) path.
        self.update_parameters_name()

    def no_weight_decay_names(self):
        """Parameters exempt from weight decay: class tokens, norms and biases (all 1-D)."""
        return {p.name for p in self.trainable_params()
                if p.name.startswith('cls_token') or len(p.shape) <= 1}

    def _check_input(self, h, w):
        if h % STRIDE != 0 or w % STRIDE != 0:
            raise ValueError(f"CoaT input size must be a multiple of {STRIDE} in height and width, "
                             f"got {h}x{w}")

    def _serial_stage(self, i, x, grid):
        """Patch embedding, class token and serial blocks of stage ``i`` (1-based); ``x`` is the
        image for stage 1, else the previous stage's tokens on ``grid``."""
        tokens = getattr(self, 'patch_embed' + str(i))(x, grid)
        h, w = (x.shape[2] // 4, x.shape[3] // 4) if i == 1 else (grid[0] // 2, grid[1] // 2)
        tokens = with_class_token(getattr(self, 'cls_token' + str(i)), tokens)
        for blk in getattr(self, 'serial_blocks' + str(i)):
            tokens = blk(tokens, h, w)
        return tokens, h, w

    def forward_tokens(self, x):
        """Runs all stages; returns the four token sequences (class token first) and grid sizes."""
        self._check_input(x.shape[2], x.shape[3])
        outs = ()
        sizes = ()
        tokens, grid = x, None
        for i in range(1, 5):
            tokens, h, w = self._serial_stage(i, tokens, grid)
            grid = (h, w)
            outs = outs + (tokens,)
            sizes = sizes + (grid,)
        x1, x2, x3, x4 = outs
        for blk in self.parallel_blocks:
            x2 = self.cpe2(x2, sizes[1][0], sizes[1][1])
            x3 = self.cpe3(x3, sizes[2][0], sizes[2][1])
            x4 = self.cpe4(x4, sizes[3][0], sizes[3][1])
            x2, x3, x4 = blk(x2, x3, x4, sizes[1:])
        return (x1, x2, x3, x4), sizes

    def forward_features(self, x):
        """The four multi-scale maps, NCHW at strides 4/8/16/32 (for detection/segmentation)."""
        outs, sizes = self.forward_tokens(x)
        feats = ()
        for i in self.out_indices:
            feats = feats + (tokens_to_image(outs[i], sizes[i][0], sizes[i][1]),)
        return feats

    def forward_head(self, outs):
        if self.parallel_depth:
            cls_tokens = ops.cat((self.norm2(outs[1])[:, :1], self.norm3(outs[2])[:, :1],
                                  self.norm4(outs[3])[:, :1]), axis=1)
            return self.head(self.aggregate(cls_tokens))
        return self.head(self.norm4(outs[3])[:, 0])

    def construct(self, x):
        if self.features_only:
            return self.forward_features(x)
        outs, _ = self.forward_tokens(x)
        return self.forward_head(outs)
