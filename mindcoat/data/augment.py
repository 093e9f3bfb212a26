"""timm's RandAugment (the version the official CoaT code pins, timm 0.3.2) on PIL images.

``rand-m9-mstd0.5-inc1`` (MindCV spells it ``randaug-m9-mstd0.5-inc1``): the 15 "increasing" ops,
``n`` (2) of them picked per image with replacement, each applied with probability 0.5 at a
magnitude drawn from N(m, mstd) clipped to [0, 10]; geometric ops fill with the mean pixel and
resample with the training interpolation ('random': bilinear or bicubic, drawn per op).

Every random draw comes from the ``np.random.Generator`` passed in, so an image's augmentation is
a function of that generator's seed alone (see dataset.py for how it is seeded).

PosterizeIncreasing keeps 0 bits at magnitude 10. The PIL of 2020 that the official runs used
returned a black image for that; Pillow 11+ refuses bits=0. We return the black image: the
official recipe's behaviour (N(9, 0.5) reaches 10 for ~2.3% of the posterize draws).
"""
import re
from dataclasses import dataclass

from PIL import Image, ImageEnhance, ImageOps

from ..errors import ConfigError

MAX_LEVEL = 10.0

INCREASING_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# timm's default (non-increasing) set, for specs without inc1
DEFAULT_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel',
    'TranslateYRel')

PIL_INTERPOLATION = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR,
                     'nearest': Image.NEAREST, 'lanczos': Image.LANCZOS,
                     'hamming': Image.HAMMING}
RANDOM_INTERPOLATION = (Image.BILINEAR, Image.BICUBIC)


# --- the image ops (PIL in, PIL out) ----------------------------------------------------------

def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def shear_x(img, factor, fill, resample):
    return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img, factor, fill, resample):
    return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(img, pct, fill, resample):
    return _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), fill, resample)


def translate_y_rel(img, pct, fill, resample):
    return _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), fill, resample)


def rotate(img, degrees, fill, resample):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def posterize(img, bits):
    if bits >= 8:
        return img
    if bits <= 0:  # old PIL: the mask keeps no bit (see the module docstring)
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits)


def solarize_add(img, add, thresh=128):
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    if img.mode not in ('L', 'RGB'):
        return img
    return img.point(lut * (3 if img.mode == 'RGB' else 1))


def _enhance(kind):
    def op(img, factor):
        return kind(img).enhance(factor)
    return op


# name -> (function, takes the geometric fill/resample arguments)
OPS = {
    'AutoContrast': (ImageOps.autocontrast, False),
    'Equalize': (ImageOps.equalize, False),
    'Invert': (ImageOps.invert, False),
    'Rotate': (rotate, True),
    'Posterize': (posterize, False),
    'PosterizeIncreasing': (posterize, False),
    'Solarize': (ImageOps.solarize, False),
    'SolarizeIncreasing': (ImageOps.solarize, False),
    'SolarizeAdd': (solarize_add, False),
    'Color': (_enhance(ImageEnhance.Color), False),
    'ColorIncreasing': (_enhance(ImageEnhance.Color), False),
    'Contrast': (_enhance(ImageEnhance.Contrast), False),
    'ContrastIncreasing': (_enhance(ImageEnhance.Contrast), False),
    'Brightness': (_enhance(ImageEnhance.Brightness), False),
    'BrightnessIncreasing': (_enhance(ImageEnhance.Brightness), False),
    'Sharpness': (_enhance(ImageEnhance.Sharpness), False),
    'SharpnessIncreasing': (_enhance(ImageEnhance.Sharpness), False),
    'ShearX': (shear_x, True),
    'ShearY': (shear_y, True),
    'TranslateXRel': (translate_x_rel, True),
    'TranslateYRel': (translate_y_rel, True),
}


SIGNED_OPS = frozenset(('Rotate', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                        'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
                        'TranslateYRel'))


# --- magnitude (0-10) -> op argument, timm 0.3.2's level functions ------------------------------
# ``negate`` is the random sign of the signed ops (drawn by the caller).

def _signed(value, negate):
    return -value if negate else value


def level_to_arg(name, level, negate=False, translate_pct=0.45):
    """The op's argument at ``level`` (None for ops without one)."""
    if name in ('AutoContrast', 'Equalize', 'Invert'):
        return None
    if name == 'Rotate':
        return _signed(level / MAX_LEVEL * 30.0, negate)
    if name == 'Posterize':
        return int(level / MAX_LEVEL * 4)
    if name == 'PosterizeIncreasing':
        return 4 - int(level / MAX_LEVEL * 4)
    if name == 'Solarize':
        return int(level / MAX_LEVEL * 256)
    if name == 'SolarizeIncreasing':
        return 256 - int(level / MAX_LEVEL * 256)
    if name == 'SolarizeAdd':
        return int(level / MAX_LEVEL * 110)
    if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
        return level / MAX_LEVEL * 1.8 + 0.1
    if name.endswith('Increasing'):  # Color/Contrast/Brightness/Sharpness: 1 +- up to 0.9
        return 1.0 + _signed(level / MAX_LEVEL * 0.9, negate)
    if name in ('ShearX', 'ShearY'):
        return _signed(level / MAX_LEVEL * 0.3, negate)
    if name in ('TranslateXRel', 'TranslateYRel'):
        return _signed(level / MAX_LEVEL * translate_pct, negate)
    raise KeyError(name)


def apply_op(img, name, arg, fill=(128, 128, 128), resample=Image.BICUBIC):
    """One op at a given argument (as level_to_arg returns it)."""
    fn, geometric = OPS[name]
    if geometric:
        fill = fill[0] if img.mode == 'L' else tuple(fill)
        return fn(img, arg, fill, resample)
    return fn(img) if arg is None else fn(img, arg)


# --- the policy --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False

    @property
    def ops(self):
        return INCREASING_OPS if self.increasing else DEFAULT_OPS


def parse_rand_augment(spec):
    """'rand-m9-mstd0.5-inc1' (timm) or 'randaug-m9-mstd0.5-inc1' (MindCV) -> RandAugmentSpec.
    Defaults as timm: magnitude 10, 2 ops, no magnitude noise, the default op set."""
    parts = str(spec).strip().split('-')
    if parts[0] not in ('rand', 'randaug'):
        raise ConfigError(f"auto_augment '{spec}': only RandAugment specs are supported "
                         f"('rand-m9-mstd0.5-inc1', or MindCV's 'randaug-m9-mstd0.5-inc1')")
    values = {}
    for part in parts[1:]:
        match = re.fullmatch(r'(m|n|mstd|inc)(\d+(?:\.\d+)?)', part)
        if not match:
            raise ConfigError(f"auto_augment '{spec}': cannot read '{part}' (known: m<magnitude>, "
                             f"n<ops per image>, mstd<magnitude std>, inc<0|1>)")
        values[match.group(1)] = float(match.group(2))
    spec = RandAugmentSpec(magnitude=values.get('m', MAX_LEVEL),
                           num_layers=int(values.get('n', 2)),
                           magnitude_std=values.get('mstd', 0.0),
                           increasing=bool(values.get('inc', 0)))
    if spec.num_layers < 1 or not 0 <= spec.magnitude <= MAX_LEVEL:
        raise ConfigError(f"auto_augment: need n >= 1 and 0 <= m <= 10, got n{spec.num_layers} "
                         f"m{spec.magnitude:g}")
    return spec


class RandAugment:
    """``RandAugment(spec, fill, interpolation)(img, rng)``: timm 0.3.2's RandAugment with every
    draw from ``rng``. ``interpolation``: a PIL filter, or 'random' (bilinear/bicubic per op)."""

    def __init__(self, spec, fill=(124, 116, 104), interpolation=Image.BICUBIC,
                 translate_pct=0.45, prob=0.5):
        self.spec = spec
        self.fill = tuple(int(v) for v in fill)
        self.interpolation = interpolation
        self.translate_pct = translate_pct
        self.prob = prob

    def __call__(self, img, rng):
        ops = self.spec.ops
        for k in rng.integers(0, len(ops), self.spec.num_layers):  # with replacement, as timm
            img = self._maybe_apply(img, ops[k], rng)
        return img

    def draw_level(self, rng):
        """The magnitude of one op: N(m, mstd) clipped to [0, 10] (m itself without noise)."""
        level = self.spec.magnitude
        if self.spec.magnitude_std > 0:
            level = rng.normal(level, self.spec.magnitude_std)
        return min(MAX_LEVEL, max(0.0, level))

    def _maybe_apply(self, img, name, rng):
        if rng.random() > self.prob:
            return img
        level = self.draw_level(rng)
        # draws in timm's order: the sign only for signed ops, the filter only for geometric ones
        negate = name in SIGNED_OPS and rng.random() > 0.5
        arg = level_to_arg(name, level, negate, self.translate_pct)
        resample = self.interpolation
        if resample == 'random' and OPS[name][1]:
            resample = RANDOM_INTERPOLATION[rng.integers(0, 2)]
        return apply_op(img, name, arg, self.fill, resample)
