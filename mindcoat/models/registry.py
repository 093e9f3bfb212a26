"""The eight published CoaT variants: their differences are data."""
import fnmatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LITE = dict(parallel_depth=0, num_heads=8)
_COAT = dict(serial_depths=(2, 2, 2, 2), parallel_depth=6, num_heads=8, mlp_ratios=(4, 4, 4, 4))

ARCHS = {
    'coat_lite_tiny': dict(_LITE, embed_dims=(64, 128, 256, 320), serial_depths=(2, 2, 2, 2),
                           mlp_ratios=(8, 8, 4, 4)),
    'coat_lite_mini': dict(_LITE, embed_dims=(64, 128, 320, 512), serial_depths=(2, 2, 2, 2),
                           mlp_ratios=(8, 8, 4, 4)),
    'coat_lite_small': dict(_LITE, embed_dims=(64, 128, 320, 512), serial_depths=(3, 4, 6, 3),
                            mlp_ratios=(8, 8, 4, 4)),
    'coat_lite_medium': dict(_LITE, embed_dims=(128, 256, 320, 512), serial_depths=(3, 6, 10, 8),
                             mlp_ratios=(4, 4, 4, 4)),
    'coat_lite_medium_384': dict(_LITE, embed_dims=(128, 256, 320, 512),
                                 serial_depths=(3, 6, 10, 8), mlp_ratios=(4, 4, 4, 4)),
    'coat_tiny': dict(_COAT, embed_dims=(152, 152, 152, 152)),
    'coat_mini': dict(_COAT, embed_dims=(152, 216, 216, 216)),
    'coat_small': dict(_COAT, embed_dims=(152, 320, 320, 320)),
}

_DATA = dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode='center',
             interpolation='bicubic', mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000)

# Data defaults per variant (what the variant was trained and evaluated with).
DATA_CONFIGS = {name: dict(_DATA) for name in ARCHS}
DATA_CONFIGS['coat_lite_medium_384'].update(input_size=(3, 384, 384))

# Published ImageNet-1k top-1 (%), official mlpc-ucsd/CoaT README.
PUBLISHED_TOP1 = {
    'coat_lite_tiny': 77.5, 'coat_lite_mini': 79.1, 'coat_lite_small': 81.9,
    'coat_lite_medium': 83.6, 'coat_lite_medium_384': 84.5,
    'coat_tiny': 78.3, 'coat_mini': 81.0, 'coat_small': 82.1,
}


# The official weights (mlpc-ucsd/CoaT README, "Performance"): file names under
# https://vcl.ucsd.edu/coat/pretrained/. The 8 hex digits are the start of the file's SHA-256
# (torch.hub's naming convention; the README asks users to check them with sha256sum).
PRETRAINED_FILES = {
    'coat_lite_tiny': 'coat_lite_tiny_e88e96b0.pth',
    'coat_lite_mini': 'coat_lite_mini_6b4a8ae5.pth',
    'coat_lite_small': 'coat_lite_small_8d362f48.pth',
    'coat_lite_medium': 'coat_lite_medium_a750cd63.pth',
    'coat_lite_medium_384': 'coat_lite_medium_384x384_f9129688.pth',
    'coat_tiny': 'coat_tiny_c6efc33c.pth',
    'coat_mini': 'coat_mini_40667eec.pth',
    'coat_small': 'coat_small_7479cf9b.pth',
}

# every model lives in one module, as MindCV's list_models(module=) counts it
MODULE = 'coat'


def _as_list(patterns):
    if not patterns:
        return []
    return list(patterns) if isinstance(patterns, (list, tuple, set)) else [patterns]


def list_models(filter='', module='', pretrained=False, exclude_filters=''):  # noqa: A002
    """Model names, sorted; MindCV's and timm's signature. ``filter`` and ``exclude_filters`` are
    fnmatch patterns (or lists of them), ``module`` is 'coat' or empty, ``pretrained=True`` keeps
    the names with official weights (all eight)."""
    names = set(ARCHS)
    if module and module != MODULE:
        return []
    include = _as_list(filter)
    if include:
        names = {n for n in names if any(fnmatch.fnmatch(n, f) for f in include)}
    for pattern in _as_list(exclude_filters):
        names = {n for n in names if not fnmatch.fnmatch(n, pattern)}
    if pretrained:
        names &= set(PRETRAINED_FILES)
    return sorted(names)
