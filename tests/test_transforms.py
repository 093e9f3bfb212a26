"""The eval transform against torchvision's (the official src/datasets.py pipeline) on real
photos; the variants' data defaults; the one data-settings resolver train, validate and predict
share; the worker clamp. Fixtures: tools/make_augment_fixtures.py."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mindcoat.config import parse_config
from mindcoat.errors import ConfigError
from mindcoat.data import DataSettings, EvalTransform, clamp_workers, resolve_data_settings
from mindcoat.data.settings import available_cpus
from mindcoat.data.transforms import center_crop, resize_short_side
from mindcoat.models import DATA_CONFIGS
from augment_fixtures import load_reference, photo

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope='module')
def ref():
    return load_reference()


def eval_cases(ref):
    return sorted({int(k[4:].split('_')[0]) for k in ref.files if k.startswith('eval')})


def test_eval_transform_equals_torchvision_on_photos(ref):
    """Resize short side to int(size / crop_pct) with PIL bicubic (antialiased), center crop,
    ToTensor + Normalize: the same pixels as torchvision's pipeline, for the official 0.875,
    timm's crop_pct option (0.9) and 'squash'."""
    modes = set()
    for k in eval_cases(ref):
        name, size, crop_pct, mode = ref[f'eval{k}_case']
        settings = DataSettings(int(size), float(crop_pct), str(mode), 'bicubic', MEAN, STD)
        tf = EvalTransform(settings)
        img = photo(str(name))
        if mode == 'center':
            resized = resize_short_side(img, tf.scale_size, Image.BICUBIC)
        else:
            resized = img.resize((tf.scale_size, tf.scale_size), Image.BICUBIC)
        crop = np.asarray(center_crop(resized, int(size)))
        np.testing.assert_array_equal(crop, ref[f'eval{k}_crop'], err_msg=str(name))
        x = tf(img)
        assert x.shape == (3, int(size), int(size)) and x.dtype == np.float32
        expected = (crop.transpose(2, 0, 1) / 255.0 - np.array(MEAN)[:, None, None]) / \
            np.array(STD)[:, None, None]
        np.testing.assert_allclose(x, expected, atol=1e-5)
        if f'eval{k}_tensor' in ref.files:
            np.testing.assert_allclose(x, ref[f'eval{k}_tensor'], rtol=0, atol=1e-6)
        modes.add((str(mode), round(float(crop_pct), 6)))
    assert {('center', 0.875), ('center', 0.9), ('squash', 1.0)} <= modes


def test_antialiased_downscale_unlike_mindspore():
    """The issue measured MindSpore's bicubic Resize at std 62.9 on noise where PIL gives 39.8:
    shrinking must average (antialias), as torchvision's PIL path does."""
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    settings = DataSettings(224, 0.875, 'center', 'bicubic', (0.0,) * 3, (1 / 255,) * 3)
    x = EvalTransform(settings)(Image.fromarray(noise))
    # uniform noise has std 73.9; mindspore.dataset.vision.Resize(BICUBIC) leaves 62.9 here,
    # PIL 25.7
    assert x.std() < 45


def test_official_eval_defaults_for_every_variant():
    """crop_pct 0.875, center crop, bicubic for all eight; 256 for 224 and 438 -> 384 for the
    384 model (official: int(256 / 224 * size)), not a squash."""
    for name, d in DATA_CONFIGS.items():
        s = resolve_data_settings(parse_config([]), name)
        assert (s.crop_pct, s.crop_mode, s.interpolation) == (0.875, 'center', 'bicubic'), name
        assert EvalTransform(s).scale_size == int(256 / 224 * d['input_size'][-1])
    assert EvalTransform(resolve_data_settings(parse_config([]), 'coat_lite_medium_384')) \
        .scale_size == 438
    img = Image.new('RGB', (500, 375))
    assert EvalTransform(resolve_data_settings(parse_config([]), 'coat_lite_tiny'))(img).shape \
        == (3, 224, 224)


def test_resolver_config_over_model_defaults():
    """A value set in the config wins, None means the variant's default (0 or an empty value
    is not 'unset'); 0-255 mean/std (MindCV) become 0-1."""
    cfg = parse_config(['--image_resize', '256', '--crop_pct', '0.95', '--crop_mode', 'squash',
                        '--interpolation', 'bilinear', '--mean', '[123.675, 116.28, 103.53]',
                        '--std', '0.5,0.5,0.5'])
    s = resolve_data_settings(cfg, 'coat_tiny')
    assert (s.image_size, s.crop_pct, s.crop_mode, s.interpolation) == \
        (256, 0.95, 'squash', 'bilinear')
    np.testing.assert_allclose(s.mean, MEAN)
    assert s.std == (0.5, 0.5, 0.5)
    default = resolve_data_settings(parse_config([]), 'coat_lite_medium_384')
    assert default == DataSettings(384, 0.875, 'center', 'bicubic', MEAN, STD)


@pytest.mark.parametrize('flags, words', [
    (['--image_resize', '33'], 'positive multiple of 32'),
    (['--image_resize', '0'], 'positive multiple of 32'),
    (['--crop_pct', '0'], 'crop_pct must be in'),
    (['--crop_pct', '1.5'], 'crop_pct must be in'),
    (['--crop_mode', 'border'], 'crop_mode must be one of'),
    (['--interpolation', 'cubic'], "unknown interpolation 'cubic'"),
    (['--std', '0.2,0.0,0.2'], 'std > 0'),
    (['--mean', '0.5,0.5'], 'one value per channel'),
])
def test_resolver_rejects_bad_values_in_one_line(flags, words):
    with pytest.raises(ConfigError, match=words) as info:
        resolve_data_settings(parse_config(flags), 'coat_lite_tiny')
    assert '\n' not in str(info.value)
    with pytest.raises(ConfigError, match="unknown model 'coat_huge'"):
        resolve_data_settings(parse_config([]), 'coat_huge')


def test_worker_clamp_notes_once(capsys):
    cpus = available_cpus()
    assert clamp_workers(1) == 1
    assert clamp_workers(cpus + 61) == cpus
    assert clamp_workers(cpus + 61) == cpus
    err = capsys.readouterr().err
    assert err.count(f'num_parallel_workers {cpus + 61} is more than the {cpus} CPU') == 1
    assert f'using {cpus}' in err
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ConfigError, match='positive integer'):
            clamp_workers(bad)


def test_eval_loader_with_more_workers_than_cpus(tmp_path):
    """A recipe's num_parallel_workers: 8 on a smaller machine builds and runs (was: 'exceeds
    the boundary'), with one note on stderr, in a fresh process."""
    from train_helpers import make_color_folder
    root = make_color_folder(str(tmp_path), per_class=(2, 3), size=40, classes=2)
    code = (
        "import sys\n"
        "from mindcoat.config import parse_config\n"
        "from mindcoat.data import create_loader, find_classes, DataSettings\n"
        "from mindcoat.data.settings import available_cpus\n"
        f"val = {os.path.join(root, 'val')!r}\n"
        "cfg = parse_config(['--batch_size', '4', '--num_parallel_workers', "
        "str(available_cpus() + 62)])\n"
        "s = DataSettings(32, 0.875, 'center', 'bicubic', (0.5,) * 3, (0.5,) * 3)\n"
        "for _ in range(2):\n"
        "    data = create_loader(cfg, val, find_classes(val), s, False)\n"
        "    n = sum(len(y) for _, y in data.loader.create_tuple_iterator(output_numpy=True))\n"
        "    print(n)\n")
    env = dict(os.environ, GLOG_v='3', PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ['6', '6']
    assert proc.stderr.count('note: num_parallel_workers') == 1
    assert f'using {available_cpus()}' in proc.stderr

