"""The shrunken detectors against the official MMDetection 2.11 code, stage by stage.

tests/fixtures/det/<name>_random.pth are MMDetection checkpoints of shrunken CoaT Mask R-CNNs
(random, calibrated weights) and <name>_stages.npz every stage of the official code on three
photos (tools/det/README.md). Each detector here is built from the overrides in <name>_meta.json,
loads the .pth through mindcoat's own reader, and runs the PNG files end to end.

Tolerances: the preprocessed input is bit-equal (same resize, same float32 arithmetic); the
dense features differ by float32 rounding only (MindSpore's and PyTorch's kernels sum in other
orders), so they are compared with small absolute tolerances; proposals must be the same boxes
in the same order, except that rows whose scores are equal to within float rounding may come
out swapped (the reference order among near-equal scores is decided by that rounding).
Detections: same count and labels in order, boxes within 1e-2 px, scores within 1e-3; masks of
at least 95% of the detections (both ways) with IoU > 0.95.
"""
import json
import os
from dataclasses import replace

import mindspore as ms
import numpy as np
import pytest

import mindcoat
from mindcoat.models.detection import collate, default_config, load_image, preprocess

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'det')
NAMES = ('coat_lite_mini_3x', 'coat_mini_3x')
# near-equal proposal scores whose order float rounding may flip
SCORE_TIE = 1e-5
BOX_PX = 1e-3


def shrunken_config(name):
    """The fixture's detector: the official config with the overrides of its meta JSON."""
    with open(os.path.join(FIXTURES, f'{name}_meta.json')) as f:
        meta = json.load(f)
    ov = meta['overrides']
    config = default_config('mask_rcnn_' + name)
    backbone = replace(config.backbone, embed_dims=tuple(ov['model.backbone.embed_dims']),
                       serial_depths=tuple(ov['model.backbone.serial_depths']),
                       parallel_depth=ov.get('model.backbone.parallel_depth',
                                             config.backbone.parallel_depth))
    assert tuple(ov['model.neck.in_channels']) == backbone.embed_dims
    channels = {ov[f'model.{k}'] for k in (
        'neck.out_channels', 'rpn_head.in_channels', 'roi_head.bbox_roi_extractor.out_channels',
        'roi_head.bbox_head.in_channels', 'roi_head.mask_roi_extractor.out_channels',
        'roi_head.mask_head.in_channels')}
    assert len(channels) == 1
    heads = replace(config.heads, fpn_channels=channels.pop(),
                    rpn_feat_channels=ov['model.rpn_head.feat_channels'],
                    fc_channels=ov['model.roi_head.bbox_head.fc_out_channels'],
                    mask_channels=ov['model.roi_head.mask_head.conv_out_channels'])
    pipeline = replace(config.pipeline, img_scale=tuple(meta['test_img_scale']))
    return replace(config, backbone=backbone, heads=heads, pipeline=pipeline)


def load_fixture_detector(name):
    return mindcoat.create_detector(config=shrunken_config(name), log=lambda *a: None,
                                    checkpoint_path=os.path.join(FIXTURES, f'{name}_random.pth'))


def match_proposals(mine, ref):
    """Index into ``mine`` of each reference row: the same row, or a neighbour when the two
    scores are within float rounding (a near-tie swapped). Fails naming the first mismatch."""
    assert mine.shape == ref.shape, f"{len(mine)} proposals, the reference has {len(ref)}"

    def same(i, j):
        return np.abs(mine[i, :4] - ref[j, :4]).max() <= BOX_PX and \
            abs(mine[i, 4] - ref[j, 4]) <= SCORE_TIE

    where = np.arange(len(ref))
    for j in range(len(ref)):
        if same(j, j):
            continue
        near = [i for i in range(max(0, j - 3), min(len(ref), j + 4))
                if abs(ref[i, 4] - ref[j, 4]) <= SCORE_TIE and same(i, j)]
        assert near, (f"proposal {j} differs: mindcoat {mine[j].tolist()}, reference "
                      f"{ref[j].tolist()}")
        where[j] = near[0]
    assert sorted(where.tolist()) == list(range(len(ref)))
    return where


def mask_iou(a, b):
    inter = np.logical_and(a, b).sum((1, 2))
    union = np.logical_or(a, b).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def matched_fraction(boxes_a, labels_a, boxes_b, labels_b):
    """Share of detections of ``a`` that have a detection of ``b`` with the same label and a box
    within 1e-2 px."""
    hits = 0
    for box, label in zip(boxes_a, labels_a):
        close = (labels_b == label) & (np.abs(boxes_b - box).max(1) <= 1e-2)
        hits += bool(close.any())
    return hits / max(len(labels_a), 1)


@pytest.fixture(scope='module', params=NAMES)
def fixture_run(request):
    """Every stage of the fixture detector on the three images (PyNative: no compilation)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    name = request.param
    net = load_fixture_detector(name)
    net.set_train(False)
    ref = np.load(os.path.join(FIXTURES, f'{name}_stages.npz'))
    runs = {}
    for image in ref['images']:
        tensor, meta = preprocess(load_image(os.path.join(FIXTURES, 'images', f'{image}.png')),
                                  net.config.pipeline)
        runs[str(image)] = (tensor, meta, net.predict_stages(collate([(tensor, meta)])))
    return name, net, ref, runs


def _ref(ref, image, key):
    return ref[f'{image}/{key}']


def test_preprocessing_is_bit_equal(fixture_run):
    _, _, ref, runs = fixture_run
    for image, (tensor, meta, _) in runs.items():
        np.testing.assert_array_equal(tensor[None], _ref(ref, image, 'input'))
        assert meta.ori_shape == tuple(_ref(ref, image, 'ori_shape'))
        assert meta.img_shape == tuple(_ref(ref, image, 'img_shape'))
        assert meta.pad_shape == tuple(_ref(ref, image, 'pad_shape'))
        np.testing.assert_array_equal(meta.scale_factor, _ref(ref, image, 'scale_factor'))


def test_dense_stages(fixture_run):
    _, _, ref, runs = fixture_run
    for image, (_, _, st) in runs.items():
        for i in range(4):
            np.testing.assert_allclose(st['backbone'][i], _ref(ref, image, f'backbone.{i}'),
                                       atol=5e-5, rtol=0, err_msg=f"{image} backbone.{i}")
        for i in range(5):
            for mine, key in ((st['fpn'][i], 'fpn'), (st['rpn_cls'][i], 'rpn_cls'),
                              (st['rpn_bbox'][i], 'rpn_bbox')):
                np.testing.assert_allclose(mine, _ref(ref, image, f'{key}.{i}'), atol=2e-4,
                                           rtol=0, err_msg=f"{image} {key}.{i}")


def test_proposals_roi_features_and_box_head(fixture_run):
    _, _, ref, runs = fixture_run
    for image, (_, _, st) in runs.items():
        where = match_proposals(st['proposals'], _ref(ref, image, 'proposals'))
        feats = _ref(ref, image, 'bbox_roi_feats')
        np.testing.assert_allclose(st['bbox_roi_feats'][where[:len(feats)]], feats, atol=2e-4,
                                   rtol=0, err_msg=f"{image} RoIAlign")
        rows = where[_ref(ref, image, 'bbox_rows')]
        np.testing.assert_allclose(st['bbox_cls_score'][rows], _ref(ref, image, 'bbox_cls_score'),
                                   atol=2e-4, rtol=0, err_msg=f"{image} box logits")
        np.testing.assert_allclose(st['bbox_bbox_pred'][rows], _ref(ref, image, 'bbox_bbox_pred'),
                                   atol=2e-4, rtol=0, err_msg=f"{image} box deltas")


def test_detections(fixture_run):
    _, _, ref, runs = fixture_run
    for image, (_, _, st) in runs.items():
        dets, labels = st['det_bboxes'], st['det_labels']
        ref_dets = _ref(ref, image, 'det_bboxes')
        assert len(dets) == len(ref_dets), image
        np.testing.assert_array_equal(labels, _ref(ref, image, 'det_labels'))
        np.testing.assert_allclose(dets[:, :4], ref_dets[:, :4], atol=1e-2, rtol=0)
        np.testing.assert_allclose(dets[:, 4], ref_dets[:, 4], atol=1e-3, rtol=0)
        # the result layout: class by class, as bbox2result returns it
        bbox_results, _ = st['detections'].to_mmdet(80)
        np.testing.assert_allclose(np.concatenate(bbox_results), _ref(ref, image, 'result_bboxes'),
                                   atol=1e-2, rtol=0)


def test_masks(fixture_run):
    _, _, ref, runs = fixture_run
    for image, (_, _, st) in runs.items():
        np.testing.assert_allclose(st['mask_rois'], _ref(ref, image, 'mask_rois')[:, 1:],
                                   atol=1e-2, rtol=0)
        feats = _ref(ref, image, 'mask_roi_feats')
        np.testing.assert_allclose(st['mask_roi_feats'][:len(feats)], feats, atol=2e-4, rtol=0)
        np.testing.assert_allclose(st['mask_pred'], _ref(ref, image, 'mask_pred'), atol=5e-4,
                                   rtol=0)
        k2, h, w = _ref(ref, image, 'masks_shape')
        ref_masks = np.unpackbits(_ref(ref, image, 'masks_packed'), axis=1,
                                  count=h * w).reshape(k2, h, w).astype(bool)
        bbox_results, segm_results = st['detections'].to_mmdet(80)
        mine = np.stack([m for cls in segm_results for m in cls])
        mine_labels = np.concatenate([[c] * len(m) for c, m in enumerate(segm_results)])
        np.testing.assert_array_equal(mine_labels, _ref(ref, image, 'mask_labels'))
        boxes = np.concatenate(bbox_results)[:, :4]
        ref_boxes = _ref(ref, image, 'result_bboxes')[:, :4]
        labels = _ref(ref, image, 'result_labels')
        assert matched_fraction(boxes, labels, ref_boxes, labels) >= 0.95
        assert matched_fraction(ref_boxes, labels, boxes, labels) >= 0.95
        assert mask_iou(mine, ref_masks).min() > 0.95, image


def test_graph_mode_compiles_and_agrees():
    """The dense graph and both heads compile in graph mode (jit O0) and give the same
    detections on one image."""
    saved = ms.get_context('jit_config')
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={'jit_level': 'O0'})
    try:
        _graph_mode_run()
    finally:
        ms.set_context(jit_config=saved)


def _graph_mode_run():
    name = NAMES[1]
    net = load_fixture_detector(name)
    net.set_train(False)
    ref = np.load(os.path.join(FIXTURES, f'{name}_stages.npz'))
    image = 'chelsea'
    tensor, meta = preprocess(load_image(os.path.join(FIXTURES, 'images', f'{image}.png')),
                              net.config.pipeline)
    dets = net.predict(collate([(tensor, meta)]))[0]
    ref_dets = _ref(ref, image, 'det_bboxes')
    np.testing.assert_array_equal(dets.labels, _ref(ref, image, 'det_labels'))
    np.testing.assert_allclose(dets.boxes, ref_dets[:, :4], atol=1e-2, rtol=0)
    np.testing.assert_allclose(dets.scores, ref_dets[:, 4], atol=1e-3, rtol=0)
    assert dets.masks.shape == (len(ref_dets),) + meta.ori_shape[:2]


def test_detect_runs_the_pipeline_and_batches_one_shape():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    name = NAMES[0]
    config = shrunken_config(name)
    images = [load_image(os.path.join(FIXTURES, 'images', f'{n}.png'))
              for n in ('coffee', 'chelsea', 'astronaut')]
    ref = np.load(os.path.join(FIXTURES, f'{name}_stages.npz'))
    net = load_fixture_detector(name)
    np.testing.assert_array_equal(net.detect(images[1:2])[0].labels,
                                  _ref(ref, 'chelsea', 'det_labels'))
    # a fixed canvas: one batch of three, each image's detections of its own size
    net.pipeline = replace(config.pipeline, canvas=(224, 224))
    batched = net.detect(images)
    assert [d.masks.shape[1:] for d in batched] == [im.shape[:2] for im in images]
    assert all(len(d) for d in batched)
    # nothing above the score threshold: empty results of the right shapes
    net.rcnn_test = replace(net.rcnn_test, score_thr=0.99)
    empty = net.detect(images[:1])[0]
    assert len(empty) == 0 and empty.masks.shape == (0,) + images[0].shape[:2]
    bbox_results, segm_results = empty.to_mmdet(80)
    assert len(bbox_results) == 80 and all(b.shape == (0, 5) for b in bbox_results)
    assert segm_results == [[] for _ in range(80)]


def test_min_bbox_size_keeps_the_official_check():
    from mindcoat.models.detection.mask_rcnn import _drop_small
    boxes = np.array([[0, 0, 5, 5], [0, 0, 5, 5], [0, 0, 1, 1], [0, 0, 5, 5]], np.float32)
    scores, levels = np.arange(4, dtype=np.float32), np.zeros(4, np.int64)
    # kept indices 0, 1, 3 sum to 4 == the box count: MMDetection 2.11 keeps every box
    assert len(_drop_small(boxes, scores, levels, 2)[0]) == 4
    assert _drop_small(boxes[:3], scores[:3], levels[:3], 2)[1].tolist() == [0, 1]
