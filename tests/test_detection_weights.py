"""Detector weights: MMDetection checkpoints load all or nothing, and every wrong file is refused
in one line; a detector's backbone initialises from the classifier files mindcoat reads."""
import os
from dataclasses import replace

import numpy as np
import pytest

import mindcoat
from mindcoat.errors import CheckpointError, UsageError
from mindcoat.models.detection import BackboneSettings, default_config
from mindcoat.weights import read_any
from mindcoat.weights.detection import detector_pretrained_cfg, read_detector_weights
from mindcoat.weights.loading import read_weights
from mindcoat.weights.readers import as_numpy
from test_detection_fixtures import FIXTURES, shrunken_config
from weight_files import write_torch_zip

WEIGHTS = os.path.join(os.path.dirname(__file__), 'fixtures', 'weights')
LITE = os.path.join(FIXTURES, 'coat_lite_mini_3x_random.pth')
COAT = os.path.join(FIXTURES, 'coat_mini_3x_random.pth')


def quiet(*_):
    pass


def params(net):
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


def raw_state_dict(path):
    """The file's state_dict as written (aliases included), as numpy arrays."""
    return {k: as_numpy(v) for k, v in read_any(path)['state_dict'].items()}


def one_line(exc_info):
    message = str(exc_info.value)
    assert '\n' not in message
    return message


def test_fixture_loads_every_key_and_collapses_aliases():
    weights, conflicts = read_detector_weights(LITE)
    raw = raw_state_dict(LITE)
    assert conflicts == [] and len(raw) > len(weights)
    net = mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'),
                                   checkpoint_path=LITE, log=quiet)
    loaded = params(net)
    assert sorted(loaded) == sorted(weights)
    for key, value in raw.items():  # every alias holds the value of its canonical parameter
        canonical = key.replace('serial_blocks1.0.cpe.', 'cpe1.')
        if canonical in loaded:
            np.testing.assert_array_equal(loaded[canonical], value)


def test_classifier_file_as_detector_is_refused():
    with pytest.raises(CheckpointError) as info:
        mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'), log=quiet,
                                 checkpoint_path=os.path.join(WEIGHTS,
                                                              'official_lite_state_dict.pth'))
    assert 'classifier' in one_line(info) and 'backbone_checkpoint' in str(info.value)


def test_another_variant_is_refused_and_nothing_is_loaded():
    net = mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'), log=quiet)
    before = params(net)
    with pytest.raises(CheckpointError) as info:
        mindcoat.weights.detection.load_detector_weights(net, COAT, log=quiet)
    assert 'another backbone' in one_line(info)
    after = params(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_another_class_count_is_refused():
    with pytest.raises(CheckpointError) as info:
        mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'), num_classes=20,
                                 checkpoint_path=LITE, log=quiet)
    assert '80 classes' in one_line(info) and 'num_classes=80' in str(info.value)


@pytest.mark.parametrize('change, words', [
    ('drop', 'missing (neck.fpn_convs.0.conv.bias)'),
    ('extra', 'unexpected (roi_head.extra.weight)'),
    ('shape', 'shape mismatch'),
    ('int', 'not floating point'),
    ('nan', 'NaN'),
])
def test_damaged_checkpoints_are_refused_whole(tmp_path, change, words):
    sd = raw_state_dict(LITE)
    if change == 'drop':
        del sd['neck.fpn_convs.0.conv.bias']
    elif change == 'extra':
        sd['roi_head.extra.weight'] = np.zeros(3, np.float32)
    elif change == 'shape':
        sd['neck.fpn_convs.0.conv.bias'] = np.zeros(5, np.float32)
    elif change == 'int':
        sd['neck.fpn_convs.0.conv.bias'] = np.zeros(32, np.int64)
    else:
        sd['rpn_head.rpn_cls.bias'] = np.full(3, np.nan, np.float32)
    path = tmp_path / 'damaged.pth'
    write_torch_zip(path, {'state_dict': sd})
    net = mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'), log=quiet)
    before = params(net)
    with pytest.raises(CheckpointError) as info:
        mindcoat.weights.detection.load_detector_weights(net, path, log=quiet)
    assert words in one_line(info)
    after = params(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def _small_detector_config(arch, embed_dims, mlp_ratios, parallel_depth):
    config = default_config('mask_rcnn_coat_lite_mini_3x')
    heads = replace(config.heads, fpn_channels=8, rpn_feat_channels=8, fc_channels=16,
                    mask_channels=8)
    backbone = BackboneSettings(arch=arch, embed_dims=embed_dims, serial_depths=(1, 1, 1, 1),
                                parallel_depth=parallel_depth, mlp_ratios=mlp_ratios)
    return replace(config, backbone=backbone, heads=heads)


LITE_BACKBONE = ('coat_lite_mini', (8, 16, 16, 24), (2, 2, 1, 1), 0)
COAT_BACKBONE = ('coat_mini', (8, 16, 16, 16), (1, 1, 1, 1), 1)


@pytest.mark.parametrize('file_name, arch', [
    ('official_lite_state_dict.pth', LITE_BACKBONE), ('timm_lite.safetensors', LITE_BACKBONE),
    ('official_trainer_checkpoint.pth', COAT_BACKBONE), ('mindcv_coat.ckpt', COAT_BACKBONE)])
def test_backbone_from_classifier_files(file_name, arch):
    path = os.path.join(WEIGHTS, file_name)
    net = mindcoat.create_detector(config=_small_detector_config(*arch), log=quiet,
                                   backbone_checkpoint=path)
    weights, _ = read_weights(path)
    loaded = params(net)
    backbone = [k for k in loaded if k.startswith('backbone.')]
    assert backbone and len(backbone) < len(loaded)
    for key in backbone:
        np.testing.assert_array_equal(loaded[key], weights[key[len('backbone.'):]], key)


def test_backbone_from_a_mindcoat_checkpoint(tmp_path):
    classifier = mindcoat.create_model('coat_lite_mini', num_classes=5, embed_dims=(8, 16, 16, 24),
                                       serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 1, 1))
    path = str(tmp_path / 'classifier.ckpt')
    mindcoat.weights.save_ckpt(path, classifier.get_parameters())
    net = mindcoat.create_detector(config=_small_detector_config(*LITE_BACKBONE), log=quiet,
                                   backbone_checkpoint=path)
    mine = params(net)
    for p in classifier.get_parameters():
        if 'backbone.' + p.name in mine:
            np.testing.assert_array_equal(mine['backbone.' + p.name], p.asnumpy())


def test_backbone_of_another_variant_is_refused():
    with pytest.raises(CheckpointError) as info:
        mindcoat.create_detector(config=_small_detector_config(*COAT_BACKBONE), log=quiet,
                                 backbone_checkpoint=os.path.join(WEIGHTS,
                                                                  'official_lite_state_dict.pth'))
    assert 'another CoaT' in one_line(info)


def test_backbone_from_a_detector_checkpoint():
    net = mindcoat.create_detector(config=shrunken_config('coat_mini_3x'), log=quiet,
                                   backbone_checkpoint=COAT)
    weights, _ = read_detector_weights(COAT)
    for key, value in params(net).items():
        if key.startswith('backbone.'):
            np.testing.assert_array_equal(value, weights[key])
        elif key == 'neck.lateral_convs.0.conv.weight':
            assert not np.array_equal(value, weights[key])  # the heads stay as initialised


def test_create_detector_argument_errors():
    with pytest.raises(UsageError, match='backbone_checkpoint'):
        mindcoat.create_detector('mask_rcnn_coat_lite_mini_3x', checkpoint_path=LITE,
                                 backbone_checkpoint=LITE, log=quiet)
    with pytest.raises(UsageError, match='unknown detector'):
        mindcoat.create_detector('mask_rcnn_coat_huge', log=quiet)
    with pytest.raises(UsageError, match='config of'):
        mindcoat.create_detector('mask_rcnn_coat_mini_3x',
                                 config=default_config('mask_rcnn_coat_lite_mini_3x'), log=quiet)
    with pytest.raises(TypeError, match='detector name'):
        mindcoat.create_detector(log=quiet)
    with pytest.raises(CheckpointError, match='not found'):
        mindcoat.create_detector(config=shrunken_config('coat_lite_mini_3x'),
                                 checkpoint_path='/nonexistent.pth', log=quiet)


def test_official_checkpoint_urls(monkeypatch):
    monkeypatch.delenv('MINDCOAT_WEIGHTS_URL', raising=False)
    cfg = detector_pretrained_cfg('mask_rcnn_coat_lite_mini_3x')
    assert cfg['url'] == ('https://vcl.ucsd.edu/coat/pretrained/tasks/mmdet/'
                          'mask_rcnn_coat_lite_mini_mstrain_480-800_adamw_3x_coco_564e80d7.pth')
    assert cfg['hash_prefix'] == '564e80d7'


def test_checkpoint_classes_are_cocos():
    meta = read_any(LITE)['meta']
    assert tuple(meta['CLASSES']) == mindcoat.models.detection.COCO_CLASSES


def test_pretrained_path_and_own_checkpoint_round_trip(tmp_path):
    config = shrunken_config('coat_lite_mini_3x')
    net = mindcoat.create_detector(config=config, pretrained=LITE, log=quiet)
    path = str(tmp_path / 'detector.ckpt')
    mindcoat.weights.save_ckpt(path, net.get_parameters())
    again = mindcoat.create_detector(config=config, checkpoint_path=path, log=quiet)
    first, second = params(net), params(again)
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_detector_checkpoint_info():
    from mindcoat.weights.detection import detector_checkpoint_info
    info = detector_checkpoint_info(LITE)
    # the shrunken backbone is no registered variant; the head says 80 COCO classes
    assert info['backbone'] is None and info['detectors'] == []
    assert info['num_classes'] == 80
    assert info['class_names'] == mindcoat.models.detection.COCO_CLASSES
    with pytest.raises(CheckpointError, match='classifier'):
        detector_checkpoint_info(os.path.join(WEIGHTS, 'official_lite_state_dict.pth'))
