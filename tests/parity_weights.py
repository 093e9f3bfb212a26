"""Deterministic weights and inputs for the parity tests, shared by the tests and by
tools/make_parity_fixtures.py (which runs the reference in PyTorch). Pure numpy, so that the
fixtures need to hold only the reference's outputs, not its weights."""
import zlib

import numpy as np


def seeded_weights(shapes, seed=0):
    """{name: shape} -> {name: float32 array}, each drawn from its own (seed, name) stream at a
    scale that keeps activations O(1) through the depth of the network."""
    out = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        shape = tuple(shape)
        noise = rng.standard_normal(shape)
        if name.endswith('bias'):
            value = 0.02 * noise
        elif len(shape) == 1:  # norm scales
            value = 1.0 + 0.1 * noise
        elif name.startswith('cls_token'):
            value = 0.02 * noise
        else:
            value = noise / np.sqrt(np.prod(shape[1:]))
        out[name] = value.astype(np.float32)
    return out


def seed_torch_model(model, seed=0):
    """Overwrites a PyTorch model's parameters with seeded_weights (for the tools/ fixture
    generators, which run in a torch environment); returns the model."""
    import torch
    weights = seeded_weights({n: tuple(p.shape) for n, p in model.named_parameters()}, seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.from_numpy(weights[n]))
    return model


def seeded_input(batch, height, width, seed=0, channels=3):
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width)) \
        .astype(np.float32)


# what the fixtures cover: every variant at its default size and at a second multiple of 32
PARITY_CASES = [(name, size) for name in (
    'coat_lite_tiny', 'coat_lite_mini', 'coat_lite_small', 'coat_lite_medium',
    'coat_tiny', 'coat_mini', 'coat_small') for size in ((224, 224), (160, 192))] + \
    [('coat_lite_medium_384', (384, 384)), ('coat_lite_medium_384', (224, 224))]
FEATURE_CASES = [('coat_lite_tiny', (64, 96)), ('coat_tiny', (64, 96))]
BATCH = 2
SEED = 2021

# backward parity: d/d(param) of sum(logits * cotangent), for a few parameters of every kind
GRAD_CASES = [('coat_lite_tiny', (64, 96)), ('coat_tiny', (64, 96))]
GRAD_PARAMS = {
    'coat_lite_tiny': ['cls_token1', 'patch_embed1.proj.weight', 'patch_embed2.norm.weight',
                       'cpe1.proj.weight', 'crpe2.conv_list.2.weight', 'crpe4.conv_list.0.bias',
                       'serial_blocks3.1.factoratt_crpe.qkv.bias', 'serial_blocks1.0.mlp.fc2.bias',
                       'norm4.weight', 'head.bias'],
    'coat_tiny': ['cls_token2', 'patch_embed1.proj.weight', 'cpe3.proj.weight',
                  'crpe4.conv_list.1.weight', 'parallel_blocks.0.factoratt_crpe4.qkv.bias',
                  'parallel_blocks.5.mlp2.fc1.bias', 'parallel_blocks.2.norm13.weight',
                  'norm2.weight', 'aggregate.weight', 'aggregate.bias', 'head.bias'],
}


def seeded_cotangent(batch, num_classes=1000, seed=0):
    return np.random.default_rng([seed, 1]).standard_normal((batch, num_classes)).astype(np.float32)
