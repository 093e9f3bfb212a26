"""python -m mindcoat.convert on MMDetection detector checkpoints: the fixture detectors (shrunken,
converted through their YAML) and a full-size one (by name) come back from the .ckpt with the
same parameters and the same detections, through create_detector and mindcoat.detect; a file
that does not fit writes nothing, and every refusal is one line."""
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml

import mindcoat
from mindcoat import convert
from mindcoat.convert import convert_detector
from mindcoat.errors import CheckpointError
from mindcoat.models.detection import COCO_CLASSES, as_yaml_dict, load_image
from mindcoat.weights import read_any, save_ckpt
from mindcoat.weights.detection import DETECTOR_FORMAT, detector_checkpoint_info
from test_detection_fixtures import FIXTURES, NAMES, load_fixture_detector, shrunken_config
from test_detection_weights import params, raw_state_dict
from train_helpers import env
from weight_files import write_torch_zip

IMAGES = os.path.join(FIXTURES, 'images')
FULL_NAME = 'mask_rcnn_coat_lite_mini_3x'


def quiet(*_):
    pass


def fixture_pth(name):
    return os.path.join(FIXTURES, f'{name}_random.pth')


def write_yaml(path, config):
    path.write_text(yaml.safe_dump(as_yaml_dict(config), sort_keys=False))
    return str(path)


def assert_same_detections(a, b):
    for field in ('boxes', 'scores', 'labels', 'masks', 'has_mask'):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize('name', NAMES)
def test_converted_fixture_detects_as_the_pth(name, tmp_path):
    """Every parameter bit-equal, the same detections and masks on the three photos, and the
    file says what it holds."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    config = shrunken_config(name)
    out = str(tmp_path / 'det.ckpt')
    convert_detector(fixture_pth(name), out, config=config, log=quiet)
    from_pth = load_fixture_detector(name)
    from_ckpt = mindcoat.create_detector(config=config, checkpoint_path=out, log=quiet)
    mine, theirs = params(from_ckpt), params(from_pth)
    assert sorted(mine) == sorted(theirs)
    assert all(np.array_equal(mine[k], theirs[k]) for k in mine)
    images = [load_image(os.path.join(IMAGES, f)) for f in sorted(os.listdir(IMAGES))]
    for a, b in zip(from_ckpt.detect(images), from_pth.detect(images)):
        assert len(a)
        assert_same_detections(a, b)
    info = detector_checkpoint_info(out)
    assert info['model'] == 'mask_rcnn_' + name and info['num_classes'] == 80
    assert info['class_names'] == COCO_CLASSES
    assert info['config'] == json.loads(json.dumps(as_yaml_dict(config)))
    assert read_any(out)['format'] == DETECTOR_FORMAT


def _convert_cli(*args, cwd):
    return subprocess.run([sys.executable, '-m', 'mindcoat.convert', *map(str, args)], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=600)


def _detect_json(ckpt, config, cwd, out_dir):
    """detect's JSON; ``config`` None: the checkpoint tells which detector."""
    given = ['--config', config] if config else []
    proc = subprocess.run([sys.executable, '-m', 'mindcoat.detect', *given,
                           '--ckpt_path', ckpt, IMAGES, '--out_dir', out_dir, '--no_png'],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(cwd, out_dir, 'detections.json')) as f:
        return json.load(f)


def test_command_line_round_trip_through_detect(tmp_path):
    """convert --config YAML, then mindcoat.detect on the .ckpt, without --config (the .ckpt
    holds the settings), writes the JSON it writes from the official .pth, record for record."""
    name = NAMES[0]
    config = write_yaml(tmp_path / 'shrunken.yaml', shrunken_config(name))
    res = _convert_cli(fixture_pth(name), '--config', config, '-o', 'det.ckpt', cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'loaded 154/154 parameters' in res.stdout and 'wrote det.ckpt' in res.stdout
    from_ckpt = _detect_json('det.ckpt', None, tmp_path, 'from_ckpt')
    from_pth = _detect_json(fixture_pth(name), config, tmp_path, 'from_pth')
    assert from_ckpt and from_ckpt == from_pth


def _full_size_official_file(path):
    """An MMDetection checkpoint of the full-size detector as the official code writes it: every
    key of official_keys.json (shared modules under each of their paths), random values."""
    with open(os.path.join(FIXTURES, 'official_keys.json')) as f:
        keys = json.load(f)['mask_rcnn_coat_lite_mini_mstrain_480-800_adamw_3x_coco']
    net = mindcoat.create_detector(FULL_NAME, log=quiet)
    values = params(net)
    from mindcoat.weights.detection import canonical_detector_name
    state = {k: values[canonical_detector_name(k)] for k in keys}
    assert all(list(state[k].shape) == shape for k, shape in keys.items())
    write_torch_zip(path, {'meta': {'mmdet_version': '2.11.0'}, 'state_dict': state})
    return values


def test_full_size_detector_by_name(tmp_path):
    """-m with a registered detector converts its official key set; the .ckpt names its model
    first among the detectors of its backbone."""
    src = tmp_path / 'official.pth'
    values = _full_size_official_file(src)
    res = _convert_cli(src, '-m', FULL_NAME, '-o', 'det.ckpt', cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    n = len(values)
    assert f'loaded {n}/{n} parameters' in res.stdout
    saved = read_any(tmp_path / 'det.ckpt')
    assert all(np.array_equal(saved[k], v) for k, v in values.items())
    info = detector_checkpoint_info(tmp_path / 'det.ckpt')
    assert info['detectors'] == [FULL_NAME, 'mask_rcnn_coat_lite_mini_1x']
    loaded = mindcoat.create_detector(FULL_NAME, checkpoint_path=str(tmp_path / 'det.ckpt'),
                                      log=quiet)
    assert all(np.array_equal(v, values[k]) for k, v in params(loaded).items())


def test_a_file_that_does_not_fit_writes_nothing(tmp_path):
    sd = raw_state_dict(fixture_pth(NAMES[0]))
    del sd['roi_head.mask_head.conv_logits.bias']
    src = tmp_path / 'damaged.pth'
    write_torch_zip(src, {'state_dict': sd})
    out = tmp_path / 'det.ckpt'
    out.write_bytes(b'previous')
    with pytest.raises(CheckpointError, match='1 missing'):
        convert_detector(str(src), str(out), config=shrunken_config(NAMES[0]), log=quiet)
    assert out.read_bytes() == b'previous'


def test_refusals_are_one_line(tmp_path, capsys):
    config = write_yaml(tmp_path / 'shrunken.yaml', shrunken_config(NAMES[0]))
    pth = fixture_pth(NAMES[0])
    out = tmp_path / 'x.ckpt'
    classifier = os.path.join(os.path.dirname(FIXTURES), 'weights', 'official_lite_state_dict.pth')
    cases = [([pth, '-m', FULL_NAME], 1, 'another backbone'),
             ([pth, '-m', 'mask_rcnn_coat_mini_3x', '--config', config], 2, 'config of'),
             ([pth, '--config', config, '--ema'], 2, '--ema is for classifiers'),
             ([pth, '--config', config, '--model_kwargs', '{"embed_dims": [8, 8, 8, 8]}'], 2,
              '--model_kwargs is for classifiers'),
             ([pth, '-m', 'coat_lite_mini', '--config', config], 2, 'is a classifier'),
             ([pth, '--config', config, '--num_classes', '20'], 1, 'for 80 classes'),
             ([classifier, '--config', config], 1, 'holds a CoaT classifier'),
             ([pth], 2, 'say which model'),
             ([pth, '-m', 'mask_rcnn_coat_huge'], 2, 'or a detector: mask_rcnn_coat_lite_mini_1x')]
    for args, status, words in cases:
        assert convert.main([*map(str, args), '-o', str(out)]) == status, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: ') and words in lines[0], \
            (args, lines)
    assert not out.exists()


def test_damaged_stored_settings_are_refused(tmp_path):
    net = load_fixture_detector(NAMES[0])
    path = str(tmp_path / 'det.ckpt')
    save_ckpt(path, list(net.get_parameters()), {'format': DETECTOR_FORMAT, 'model': net.name,
                                                 'config': '{not json'})
    with pytest.raises(CheckpointError, match='stored config is not valid JSON'):
        detector_checkpoint_info(path)
