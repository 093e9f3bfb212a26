"""The eight detectors as the official release defines them: parameter layout against the
official state_dict keys, the YAML configs against the official MMDetection configs, the config
loader's refusals, and the fixed-canvas mode."""
import glob
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from mindcoat.errors import ConfigError, UsageError
from mindcoat.models.detection import DETECTORS, PipelineSettings, build_detector, collate, \
    default_config, image_size, load_detector_config, load_image, official_config_name, \
    padded_shape, preprocess, resized_size
from mindcoat.models.registry import ARCHS
from mindcoat.weights.detection import canonical_detector_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'det')
CONFIGS = os.path.join(ROOT, 'configs', 'det')


def _json(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


def test_registry_names_eight_detectors_on_four_backbones():
    assert len(DETECTORS) == 8
    assert {d['backbone'] for d in DETECTORS.values()} == {
        'coat_lite_mini', 'coat_lite_small', 'coat_mini', 'coat_small'}
    configs = _json('official_configs.json')
    assert {official_config_name(n) for n in DETECTORS} == {k for k in configs
                                                            if not k.startswith('_')}


@pytest.mark.parametrize('backbone', ['coat_lite_mini', 'coat_lite_small', 'coat_mini',
                                      'coat_small'])
def test_parameter_layout_equals_official_keys(backbone):
    """Built at full size: every parameter is an official key with its shape, and every official
    key is a parameter or an alias of one (the backbone's shared cpe/crpe under each block)
    with the same shape. The 1x and 3x detectors of a backbone share the layout."""
    official = _json('official_keys.json')
    names = [n for n, d in DETECTORS.items() if d['backbone'] == backbone]
    keys = [official[official_config_name(n)] for n in names]
    assert keys[0] == keys[1]
    net = build_detector(default_config(names[0]))
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    theirs = {}
    for key, shape in keys[0].items():
        canonical = canonical_detector_name(key)
        assert theirs.setdefault(canonical, tuple(shape)) == tuple(shape), key
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs


# ------------------------------------------------------------------------------------ configs
def _official_values(config, flat):
    """(official flat key, its value, the value our config gives it) for every key."""
    b, h, r, q, p = config.backbone, config.heads, config.rpn, config.rcnn, config.pipeline
    bb, rh, ri = 'model.backbone.', 'model.rpn_head.', 'model.roi_head.'
    pipe = 'data.test.pipeline.1.'
    ours = {
        'model.type': 'MaskRCNN', 'model.pretrained': None,
        bb + 'type': 'CoaT', bb + 'patch_size': b.patch_size, bb + 'embed_dims': b.embed_dims,
        bb + 'serial_depths': b.serial_depths, bb + 'parallel_depth': b.parallel_depth,
        bb + 'num_heads': b.num_heads, bb + 'mlp_ratios': b.mlp_ratios,
        bb + 'drop_path_rate': b.drop_path_rate,
        bb + 'out_features': ('x1_nocls', 'x2_nocls', 'x3_nocls', 'x4_nocls'),
        bb + 'return_interm_layers': True,
        'model.neck.type': 'FPN', 'model.neck.in_channels': b.embed_dims,
        'model.neck.out_channels': h.fpn_channels, 'model.neck.num_outs': h.num_outs,
        rh + 'type': 'RPNHead', rh + 'in_channels': h.fpn_channels,
        rh + 'feat_channels': h.rpn_feat_channels,
        rh + 'anchor_generator.type': 'AnchorGenerator',
        rh + 'anchor_generator.scales': h.anchor_scales,
        rh + 'anchor_generator.ratios': h.anchor_ratios,
        rh + 'anchor_generator.strides': h.anchor_strides,
        rh + 'bbox_coder.type': 'DeltaXYWHBBoxCoder',
        rh + 'bbox_coder.target_means': h.rpn_target_means,
        rh + 'bbox_coder.target_stds': h.rpn_target_stds,
        ri + 'type': 'StandardRoIHead',
        ri + 'bbox_head.type': 'Shared2FCBBoxHead' if h.num_shared_fcs == 2 else None,
        ri + 'bbox_head.in_channels': h.fpn_channels,
        ri + 'bbox_head.fc_out_channels': h.fc_channels,
        ri + 'bbox_head.roi_feat_size': h.bbox_roi_size,
        ri + 'bbox_head.num_classes': config.num_classes,
        ri + 'bbox_head.bbox_coder.type': 'DeltaXYWHBBoxCoder',
        ri + 'bbox_head.bbox_coder.target_means': h.bbox_target_means,
        ri + 'bbox_head.bbox_coder.target_stds': h.bbox_target_stds,
        ri + 'bbox_head.reg_class_agnostic': False,
        ri + 'mask_head.type': 'FCNMaskHead', ri + 'mask_head.num_convs': h.mask_num_convs,
        ri + 'mask_head.in_channels': h.fpn_channels,
        ri + 'mask_head.conv_out_channels': h.mask_channels,
        ri + 'mask_head.num_classes': config.num_classes,
        'model.test_cfg.rpn.nms_pre': r.nms_pre, 'model.test_cfg.rpn.max_per_img': r.max_per_img,
        'model.test_cfg.rpn.nms.type': 'nms', 'model.test_cfg.rpn.nms.iou_threshold':
            r.iou_threshold, 'model.test_cfg.rpn.min_bbox_size': r.min_bbox_size,
        'model.test_cfg.rcnn.score_thr': q.score_thr, 'model.test_cfg.rcnn.nms.type': 'nms',
        'model.test_cfg.rcnn.nms.iou_threshold': q.iou_threshold,
        'model.test_cfg.rcnn.max_per_img': q.max_per_img,
        'model.test_cfg.rcnn.mask_thr_binary': q.mask_thr_binary,
        'data.test.pipeline.0.type': 'LoadImageFromFile',
        pipe + 'type': 'MultiScaleFlipAug', pipe + 'img_scale': p.img_scale, pipe + 'flip': False,
        pipe + 'transforms.0.type': 'Resize', pipe + 'transforms.0.keep_ratio': p.keep_ratio,
        pipe + 'transforms.1.type': 'RandomFlip', pipe + 'transforms.2.type': 'Normalize',
        pipe + 'transforms.2.mean': p.mean, pipe + 'transforms.2.std': p.std,
        pipe + 'transforms.2.to_rgb': p.to_rgb, pipe + 'transforms.3.type': 'Pad',
        pipe + 'transforms.3.size_divisor': p.size_divisor,
        pipe + 'transforms.4.type': 'ImageToTensor', pipe + 'transforms.4.keys': ('img',),
        pipe + 'transforms.5.type': 'Collect', pipe + 'transforms.5.keys': ('img',),
    }
    for prefix, size in (('bbox_roi_extractor.', h.bbox_roi_size),
                         ('mask_roi_extractor.', h.mask_roi_size)):
        ours.update({
            ri + prefix + 'type': 'SingleRoIExtractor', ri + prefix + 'roi_layer.type': 'RoIAlign',
            ri + prefix + 'roi_layer.output_size': size,
            ri + prefix + 'roi_layer.sampling_ratio': h.sampling_ratio,
            ri + prefix + 'out_channels': h.fpn_channels,
            ri + prefix + 'featmap_strides': h.roi_strides})
    return [(key, value, ours.get(key, '<not set by mindcoat>')) for key, value in flat.items()]


def _plain(v):
    return list(v) if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(CONFIGS, '*.yaml'))))
def test_yaml_configs_are_the_official_configs(path):
    config = load_detector_config(path, tuple(DETECTORS), tuple(ARCHS))
    assert os.path.basename(path) == f"{config.model}.yaml"
    official = _json('official_configs.json')[official_config_name(config.model)]
    for key, theirs, ours in _official_values(config, official['flat']):
        assert _plain(ours) == _plain(theirs), f"{path}: {key} is {ours!r}, official {theirs!r}"
    # nothing beyond the official values, and the registry's own defaults agree
    assert config == default_config(config.model)
    inference = official['inference']
    assert list(config.pipeline.img_scale) == inference['img_scale']
    assert config.pipeline.size_divisor == inference['size_divisor']
    assert config.backbone.arch == DETECTORS[config.model]['backbone']


def test_eight_yaml_files():
    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONFIGS, '*.yaml')))
    assert names == sorted(DETECTORS)


@pytest.mark.parametrize('text, words', [
    ('model: mask_rcnn_coat_mini_3x\nbogus: 1\n', 'bogus'),
    ('model: mask_rcnn_coat_mini_3x\nrcnn: {score_thr: 0.05, iou: 0.5}\n', 'iou'),
    ('model: mask_rcnn_coat_mini_3x\nrcnn: {score_thr: -1}\n', 'rcnn.score_thr'),
    ('model: mask_rcnn_coat_mini_3x\nrpn: {nms_pre: 1.5}\n', 'rpn.nms_pre'),
    ('model: mask_rcnn_coat_mini_3x\npipeline: {canvas: [700, 1280]}\n', 'pipeline.canvas'),
    ('model: mask_rcnn_coat_mini_3x\npipeline: {img_scale: [1333]}\n', 'pipeline.img_scale'),
    ('model: mask_rcnn_coat_mini_3x\npipeline: {keep_ratio: false}\n', 'keep_ratio'),
    ('model: mask_rcnn_coat_mini_3x\nbackbone: {arch: resnet50}\n', 'backbone.arch'),
    ('model: mask_rcnn_resnet\n', 'model'),
    ('model: mask_rcnn_coat_mini_3x\nheads: {anchor_strides: [4, 8]}\n', 'anchor_strides'),
    ('model: mask_rcnn_coat_mini_3x\nnum_classes: 0\n', 'num_classes'),
    ('model: [unclosed\n', 'not valid YAML'),
    ('- a list\n', 'mapping'),
])
def test_config_errors_are_one_line(tmp_path, text, words):
    path = tmp_path / 'det.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_detector_config(path, tuple(DETECTORS), tuple(ARCHS))
    message = str(info.value)
    assert words in message and '\n' not in message


def test_missing_config_file_and_unknown_detector(tmp_path):
    with pytest.raises(ConfigError, match='no such file'):
        load_detector_config(tmp_path / 'nope.yaml')
    with pytest.raises(ConfigError, match='not a regular file'):
        load_detector_config(tmp_path)
    (tmp_path / 'binary.yaml').write_bytes(b'\xff\xfe\x00')
    with pytest.raises(ConfigError, match='UTF-8'):
        load_detector_config(tmp_path / 'binary.yaml')
    with pytest.raises(UsageError, match='unknown detector'):
        build_detector(replace(default_config('mask_rcnn_coat_mini_3x'), model='mask_rcnn_x'))


def test_a_config_file_with_overrides(tmp_path):
    path = tmp_path / 'small.yaml'
    path.write_text('model: mask_rcnn_coat_lite_mini_3x\nnum_classes: 3\n'
                    'rcnn: {score_thr: 0.3}\npipeline: {canvas: [768, 1280]}\n')
    config = load_detector_config(path, tuple(DETECTORS), tuple(ARCHS))
    assert config.num_classes == 3 and config.rcnn.score_thr == 0.3
    assert config.rcnn.max_per_img == 100 and config.pipeline.canvas == (768, 1280)
    assert config.backbone.arch is None  # the detector's own backbone, unchanged


# --------------------------------------------------------------------------- image shapes
@pytest.mark.parametrize('orientation', [1, 3, 6, 8])
def test_image_size_from_the_header_is_the_decoded_size(tmp_path, orientation):
    """detect groups images by the padded shape their headers give: EXIF orientations 6 and 8
    turn the image, as load_image does, and the shape is preprocess's own."""
    from PIL import Image
    path = tmp_path / 'photo.jpg'
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(path, exif=exif)
    image = load_image(path)
    assert image_size(path) == (image.shape[1], image.shape[0])
    assert image.shape[:2] == ((50, 30) if orientation in (6, 8) else (30, 50))
    settings = PipelineSettings(img_scale=(224, 128))
    tensor, _ = preprocess(image, settings)
    assert padded_shape(*resized_size(*image_size(path), settings)[0], settings) == \
        tensor.shape[1:]
    (tmp_path / 'broken.jpg').write_bytes(b'not an image')
    assert image_size(tmp_path / 'broken.jpg') is None


# ------------------------------------------------------------------------------ fixed canvas
def test_canvas_gives_every_image_one_shape():
    settings = PipelineSettings(img_scale=(224, 128), canvas=(224, 256))
    shapes, metas = set(), []
    for name in ('coffee', 'chelsea', 'astronaut'):
        image = load_image(os.path.join(FIXTURES, 'images', f'{name}.png'))
        tensor, meta = preprocess(image, settings)
        official, official_meta = preprocess(image, PipelineSettings(img_scale=(224, 128)))
        shapes.add(tensor.shape)
        metas.append(meta)
        # within the canvas the image is the official one; the rest is zero padding
        assert meta.img_shape == official_meta.img_shape
        h, w = meta.img_shape[:2]
        np.testing.assert_array_equal(tensor[:, :h, :w], official[:, :h, :w])
        assert not tensor[:, h:].any() and not tensor[:, :, w:].any()
    assert shapes == {(3, 224, 256)}
    assert collate([(np.zeros((3, 224, 256), np.float32), m) for m in metas]).tensor.shape == \
        (3, 3, 224, 256)


def test_canvas_smaller_than_the_resize_shrinks_the_image():
    image = np.zeros((400, 600, 3), np.uint8)
    tensor, meta = preprocess(image, PipelineSettings(canvas=(320, 320)))
    assert tensor.shape == (3, 320, 320)
    assert meta.img_shape == (213, 320, 3)
    np.testing.assert_allclose(meta.scale_factor, [320 / 600, 213 / 400] * 2, rtol=1e-6)


def test_yaml_dict_round_trip():
    from mindcoat.models.detection import as_yaml_dict, detector_config
    config = replace(default_config('mask_rcnn_coat_small_3x'), num_classes=7,
                     pipeline=PipelineSettings(canvas=(768, 1280)))
    assert detector_config(as_yaml_dict(config), known_models=tuple(DETECTORS)) == config
