"""Training augmentation against the official code's (timm 0.3.2): RandAugment op by op and
draw for draw, RandomResizedCrop's box, RandomErasing, batch-mode Mixup/CutMix; and the
statistics of the draws on real photos. The fixtures are written by
tools/make_augment_fixtures.py with timm 0.3.2's own modules, recording every random draw they
make; the tests replay those draws through mindcoat's code."""
import math

import numpy as np
import pytest
from PIL import Image

from mindcoat.data.augment import (INCREASING_OPS, RandAugment, apply_op, level_to_arg,
                                   parse_rand_augment)
from mindcoat.data.mixing import BatchMix, MixParams, cutmix_box_at
from mindcoat.data.transforms import random_erasing, random_resized_crop_box
from augment_fixtures import load_reference, photo

PHOTOS = ['chelsea.jpg', 'coffee.jpg', 'rocket.jpg', 'astronaut.png']
OP_SIZE = (32, 24)
FILL = (124, 116, 104)


@pytest.fixture(scope='module')
def ref():
    return load_reference()


def op_input(k):
    return photo(PHOTOS[k]).resize(OP_SIZE, Image.BICUBIC)


class Replay:
    """Hands back the draws timm made (recorded by the fixture tool) in the order mindcoat's code
    asks for them, checking that each request is the same kind of draw over the same range."""

    def __init__(self, kinds, values, noise=None):
        self.queue = [(str(k), float(v)) for k, v in zip(kinds, values)]
        self.noise = noise

    def _next(self, kind):
        assert self.queue, f'mindcoat drew more than timm (a {kind} draw)'
        got, value = self.queue.pop(0)
        assert got == kind, f'timm drew {got} here, mindcoat asks for {kind}'
        return value

    def random(self):
        return self._next('random')

    def uniform(self, low, high):
        value = self._next('uniform')
        assert low <= value <= high
        return value

    def normal(self, loc, scale):
        return self._next('normal')

    def integers(self, low, high, size=None):
        values = [int(self._next('integers')) for _ in range(1 if size is None else size)]
        assert all(low <= v < high for v in values), (values, low, high)
        return values[0] if size is None else np.array(values)

    def standard_normal(self, shape, dtype):
        assert self.noise is not None and self.noise.shape == shape
        return self.noise.astype(dtype)

    def done(self):
        assert not self.queue, f'timm drew {len(self.queue)} more value(s) than mindcoat'


def test_each_rand_augment_op_matches_timm(ref):
    """All 15 'increasing' ops at fixed magnitudes, both signs, bilinear and bicubic: the op's
    argument equals timm's and the output image is identical."""
    names, params = ref['op_names'], ref['op_params']
    assert set(names) == set(INCREASING_OPS)
    for k, (name, (mag, negate, resample, timm_arg, photo_k)) in enumerate(zip(names, params)):
        arg = level_to_arg(str(name), mag, bool(negate))
        if math.isnan(timm_arg):
            assert arg is None, name
        else:
            assert arg == pytest.approx(timm_arg, abs=1e-12), (name, mag, negate)
        out = apply_op(op_input(int(photo_k)), str(name), arg, FILL, int(resample))
        np.testing.assert_array_equal(np.asarray(out), ref[f'op{k}_out'],
                                      err_msg=f'{name} m{mag} negate={bool(negate)}')


def test_posterize_at_magnitude_10_is_black_as_old_pil(ref):
    """timm asks for posterize(bits=0) at magnitude 10 (Pillow 11+ refuses it): black, as the
    PIL of the official runs returned."""
    names, params = ref['op_names'], ref['op_params']
    k = [i for i, (n, p) in enumerate(zip(names, params))
         if n == 'PosterizeIncreasing' and p[0] == 10.0][0]
    assert level_to_arg('PosterizeIncreasing', 10.0) == 0
    out = apply_op(op_input(int(params[k][4])), 'PosterizeIncreasing', 0)
    assert not np.asarray(out).any() and not ref[f'op{k}_out'].any()


@pytest.mark.parametrize('mode', ['bicubic', 'random'])
def test_rand_augment_policy_matches_timm_draw_for_draw(ref, mode):
    """'rand-m9-mstd0.5-inc1' end to end: the same draws (ops picked with replacement, the 0.5
    gates, N(9, 0.5) magnitudes, signs, 'random' filters) give the same images as timm."""
    ra = RandAugment(parse_rand_augment('rand-m9-mstd0.5-inc1'), FILL,
                     Image.BICUBIC if mode == 'bicubic' else 'random')
    trials = sorted({int(k[len(f'ra_{mode}'):].split('_')[0]) for k in ref.files
                     if k.startswith(f'ra_{mode}')})
    assert len(trials) >= 20
    changed = 0
    for t in trials:
        replay = Replay(ref[f'ra_{mode}{t}_kinds'], ref[f'ra_{mode}{t}_draws'])
        img = op_input(t % len(PHOTOS))
        out = np.asarray(ra(img, replay))
        replay.done()
        np.testing.assert_array_equal(out, ref[f'ra_{mode}{t}_out'], err_msg=f'trial {t}')
        changed += not np.array_equal(out, np.asarray(img))
    assert 0 < changed < len(trials)  # both outcomes were exercised


def test_random_resized_crop_box_matches_timm(ref):
    """timm's get_params: area and log-aspect draws, w from sqrt(area * aspect), the inclusive
    randint for the corner, and the central-crop fallback after 10 misses."""
    fallback = 0
    for k, (args, box) in enumerate(zip(ref['rrc_args'], ref['rrc_boxes'])):
        width, height, s0, s1, r0, r1 = args
        kinds = [x for x in ref['rrc_kinds'][k] if x]
        replay = Replay(kinds, ref['rrc_draws'][k][:len(kinds)])
        got = random_resized_crop_box(int(width), int(height), (s0, s1), (r0, r1), replay)
        replay.done()
        assert got == tuple(box), k
        fallback += len(kinds) == 20
    assert fallback >= 1


def test_random_erasing_matches_timm(ref):
    """timm's RandomErasing ('pixel', count 1): the gate, area, log-uniform aspect with
    h = sqrt(area * aspect), w = sqrt(area / aspect), the corner, per-pixel noise."""
    trials = sorted({int(k[2:].split('_')[0]) for k in ref.files if k.startswith('re')
                     and k[2].isdigit()})
    erased = 0
    for t in trials:
        shape = tuple(ref[f're{t}_shape'])
        top, left, h, w = ref[f're{t}_box']
        noise = ref[f're{t}_noise']
        replay = Replay(ref[f're{t}_kinds'], ref[f're{t}_draws'], noise if h else None)
        x = random_erasing(np.zeros(shape, np.float32), 0.5, replay)
        replay.done()
        expected = np.zeros(shape, np.float32)
        expected[:, top:top + h, left:left + w] = noise
        np.testing.assert_array_equal(x, expected, err_msg=f'trial {t}')
        erased += bool(h)
    assert 0 < erased < len(trials)


def test_mixup_and_cutmix_match_timm_batch_mode(ref):
    """Given timm's lambda and box: the flipped-batch pairing, CutMix's box (from its centre, with
    the corrected lambda) and Mixup's blend, and the mixed label-smoothed targets."""
    mix = BatchMix(0.8, 1.0, 1.0, 0.5, smoothing=0.1, num_classes=5)
    kinds = set()
    for t in range(12):
        lam, use_cutmix, y0, y1, x0, x1, raw_lam, cy, cx = ref[f'mix{t}_params']
        x = ref[f'mix{t}_x'].copy()
        box = None
        if use_cutmix and raw_lam != 1.0:
            box, corrected = cutmix_box_at(x.shape[2], x.shape[3], raw_lam, int(cy), int(cx))
            assert box == (y0, y1, x0, x1) and corrected == pytest.approx(lam, abs=1e-12)
        kinds.add('cutmix' if box else 'mixup' if lam != 1.0 else 'none')
        images, targets = mix.apply(x, ref[f'mix{t}_y'], MixParams(float(lam), box))
        np.testing.assert_allclose(images, ref[f'mix{t}_xo'], rtol=0, atol=1e-6)
        np.testing.assert_allclose(targets, ref[f'mix{t}_yo'], rtol=0, atol=1e-6)
    assert kinds >= {'cutmix', 'mixup'}


def test_mix_draws_statistics():
    """One decision per batch: mixed with probability prob, CutMix with switch_prob, lambda
    ~ Beta(alpha, alpha) (mean 1/2, Mixup's variance 1/(4(2 alpha + 1)))."""
    mix = BatchMix(0.8, 1.0, prob=0.7, switch_prob=0.5, num_classes=10)
    rng = np.random.default_rng(0)
    draws = [mix.draw(32, 32, rng) for _ in range(4000)]
    mixed = [d for d in draws if d.lam != 1.0]
    cut = [d for d in mixed if d.box is not None]
    assert abs(len(mixed) / len(draws) - 0.7) < 0.03
    assert abs(len(cut) / len(mixed) - 0.5) < 0.04
    mix_lams = np.array([d.lam for d in mixed if d.box is None])
    assert abs(mix_lams.mean() - 0.5) < 0.03
    assert abs(mix_lams.var() - 1 / (4 * (2 * 0.8 + 1))) < 0.01
    for d in cut:  # the corrected lambda is the unpasted area
        y0, y1, x0, x1 = d.box
        assert d.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 1024)


def test_erasing_draws_statistics():
    """Aspect ratio log-uniform in (0.3, 1/0.3): log(h/w) symmetric around 0 with the uniform's
    spread; area within (0.02, 1/3) of the image; applied with the given probability."""
    rng = np.random.default_rng(1)
    log_aspect, areas, hits = [], [], 0
    for _ in range(3000):
        x = random_erasing(np.zeros((1, 96, 96), np.float32), 0.25, rng)
        mask = x[0] != 0
        if mask.any():
            hits += 1
            rows, cols = np.nonzero(mask)
            h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
            log_aspect.append(math.log(h / w))
            areas.append(h * w / 96 ** 2)
    assert abs(hits / 3000 - 0.25) < 0.03
    log_aspect = np.array(log_aspect)
    assert abs(np.median(log_aspect)) < 0.1
    # uniform on (-1.204, 1.204): std 0.695 (a uniform aspect in (0.3, 3.33) gives ~0.56)
    assert abs(log_aspect.std() - math.log(1 / 0.3) / math.sqrt(3)) < 0.06
    assert 0.015 < min(areas) and max(areas) < 0.36


def test_rand_augment_on_real_photos_leaves_a_quarter_untouched():
    """timm's policy leaves an image unchanged when both picked ops are skipped (p = 1/4), and
    PosterizeIncreasing at N(9, 0.5) keeps 1 bit (0 when the magnitude clips at 10).
    MindSpore's RandAugment, which the pipeline used before, changed ~99% of images and kept
    4 bits."""
    ra = RandAugment(parse_rand_augment('rand-m9-mstd0.5-inc1'), FILL, Image.BICUBIC)
    images = [photo(n).resize((48, 48), Image.BICUBIC) for n in PHOTOS]
    same = 0
    for k in range(400):
        img = images[k % len(images)]
        same += np.array_equal(np.asarray(ra(img, np.random.default_rng(k))), np.asarray(img))
    assert 0.22 < same / 400 < 0.36
    rng = np.random.default_rng(2)
    bits = [level_to_arg('PosterizeIncreasing', ra.draw_level(rng)) for _ in range(4000)]
    counts = np.bincount(bits, minlength=5)
    # 1 bit for magnitudes in [7.5, 10), 0 at the clip (P(N(9, .5) >= 10) = 2.3%), 2 bits below
    # 7.5 (0.13%); never more
    assert counts[1] / 4000 > 0.95 and 0.01 < counts[0] / 4000 < 0.04
    assert counts[2] / 4000 < 0.005 and counts[3:].sum() == 0
    posterized = np.asarray(apply_op(images[0], 'PosterizeIncreasing', 1))
    assert len(np.unique(posterized)) == 2  # 1 bit kept: 0 or 128


def test_rand_augment_specs():
    timm = parse_rand_augment('rand-m9-mstd0.5-inc1')
    assert (timm.magnitude, timm.num_layers, timm.magnitude_std, timm.increasing) == \
        (9, 2, 0.5, True)
    assert timm.ops == INCREASING_OPS and len(INCREASING_OPS) == 15
    mindcv = parse_rand_augment('randaug-m7-mstd0.5-inc1')  # MindCV's spelling
    assert (mindcv.magnitude, mindcv.magnitude_std, mindcv.increasing) == (7, 0.5, True)
    assert parse_rand_augment('rand-m9-n3').num_layers == 3
    assert not parse_rand_augment('rand-m9').increasing
    for bad in ('autoaug-v0', 'rand-x9', 'rand-m11', 'rand-n0'):
        with pytest.raises(ValueError, match='auto_augment'):
            parse_rand_augment(bad)
