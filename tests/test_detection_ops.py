"""The detection operators (mindcoat.ops.detection) on small cases whose answers are known:
worked by hand, analytic, or recorded from PyTorch / OpenCV (torch 2.14.1, opencv 4.14 on the
reference venv of tools/det/README.md)."""
import hashlib

import numpy as np
import pytest

from mindcoat.ops import dispatch
from mindcoat.ops.detection import AnchorGenerator, base_anchors, batched_nms, delta2bbox, \
    extract_roi_features, map_roi_levels, multiclass_nms, nms, paste_masks, rescale_size, \
    resize_bilinear, roi_align, torch_sort_desc
from mindcoat.ops.detection.boxes import nms_sorted_numpy
from mindcoat.ops.detection.roi_align import roi_align_numpy

F32 = np.float32


@pytest.fixture(params=['kernel', 'numpy'])
def host_path(request, monkeypatch):
    """Runs a test on csrc/detection.cc's RoIAlign and NMS, then on the NumPy reference
    (MINDCOAT_NATIVE_ROIALIGN / _NMS set)."""
    for op in ('roi_align', 'nms'):
        dispatch._choices.pop((op, 'CPU'), None)
    if request.param == 'numpy':
        monkeypatch.setenv('MINDCOAT_NATIVE_ROIALIGN', '1')
        monkeypatch.setenv('MINDCOAT_NATIVE_NMS', '1')
    uses_kernel = dispatch.host_library('roi_align') is not None
    assert uses_kernel == (request.param == 'kernel')
    assert (dispatch.host_library('nms') is not None) == uses_kernel
    yield request.param
    for op in ('roi_align', 'nms'):
        dispatch._choices.pop((op, 'CPU'), None)


# ------------------------------------------------------------------------------------ sorting
def test_sort_matches_torch_ties_order():
    # torch.from_numpy(a).sort(0, descending=True)[1] on the CPU: introsort, not stable
    a = ((np.arange(40) * 7) % 5).astype(F32)
    torch_order = [17, 2, 37, 22, 7, 32, 27, 12, 9, 24, 14, 29, 19, 34, 4, 39, 21, 1, 26, 31, 36,
                   16, 11, 6, 18, 23, 38, 13, 28, 3, 8, 33, 0, 20, 5, 35, 10, 30, 15, 25]
    assert torch_sort_desc(a).tolist() == torch_order
    assert torch_sort_desc(a, 7).tolist() == torch_order[:7]


def test_sort_small_arrays_are_stable_and_nan_first():
    # up to 16 elements std::sort is an insertion sort: equal values keep their order
    a = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.5, 0.9, 0.5], F32)
    assert torch_sort_desc(a).tolist() == [1, 3, 6, 0, 2, 5, 7, 4]
    b = np.array([1.0, np.nan, -0.0, 0.0, np.inf], F32)
    assert torch_sort_desc(b).tolist() == [1, 4, 0, 2, 3]
    assert torch_sort_desc(np.zeros(0, F32)).tolist() == []


def test_sort_top_k_equals_full_sort_prefix():
    rng = np.random.default_rng(3)
    for n in (17, 100, 5000):
        a = rng.integers(0, 7, n).astype(F32)
        full = torch_sort_desc(a)
        assert np.array_equal(np.sort(a)[::-1], a[full])
        for k in (1, 16, n // 2, n):
            assert np.array_equal(torch_sort_desc(a, k), full[:k])


# ------------------------------------------------------------------------------------ anchors
def test_anchor_generator_docstring_example():
    # mmdet's AnchorGenerator([16], [1.], [1.], [9]).grid_anchors([(2, 2)])
    anchors = AnchorGenerator([16], [1.0], [1.0])
    anchors.base = [base_anchors(9, [1.0], [1.0])]
    expected = [[-4.5, -4.5, 4.5, 4.5], [11.5, -4.5, 20.5, 4.5], [-4.5, 11.5, 4.5, 20.5],
                [11.5, 11.5, 20.5, 20.5]]
    np.testing.assert_array_equal(anchors.grid([(2, 2)])[0], np.array(expected, F32))


def test_mask_rcnn_anchors_order_and_values():
    gen = AnchorGenerator([4, 8, 16, 32, 64], [0.5, 1.0, 2.0], [8])
    base = gen.base[0]
    # stride 4, scale 8: 32 px boxes; ratio h/w 0.5, 1, 2, centred on the cell's corner
    r = np.sqrt(F32(0.5))
    np.testing.assert_allclose(base, [[-16 / r, -16 * r, 16 / r, 16 * r], [-16, -16, 16, 16],
                                      [-16 * r, -16 / r, 16 * r, 16 / r]], rtol=1e-6)
    level = gen.grid([(2, 3), (1, 2), (1, 1), (1, 1), (1, 1)])[0]
    assert level.shape == (2 * 3 * 3, 4)
    # order (h, w, anchor): row 1 of the grid, column 2, anchor 1 (ratio 1)
    np.testing.assert_array_equal(level[(1 * 3 + 2) * 3 + 1], [8 - 16, 4 - 16, 8 + 16, 4 + 16])


# ---------------------------------------------------------------------------------- box coder
def test_delta2bbox_docstring_example():
    rois = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]], F32)
    deltas = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]], F32)
    expected = [[0, 0, 1, 1], [0.1409, 0.1409, 2.8591, 2.8591], [0, 0.3161, 4.1945, 0.6839],
                [5, 5, 5, 5]]
    np.testing.assert_allclose(delta2bbox(rois, deltas, max_shape=(32, 32, 3)), expected,
                               atol=1e-4)


def test_delta2bbox_class_specific_stds_and_clip():
    rois = np.array([[10, 10, 30, 50]], F32)
    deltas = np.zeros((1, 8), F32)
    deltas[0, 4:] = [1, 0, 100, 0]  # class 1: shift by 0.1 * w, dw clipped to log(1000 / 16)
    out = delta2bbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2), max_shape=(45, 200))
    np.testing.assert_allclose(out[0, :4], [10, 10, 30, 45])
    half = 20 * 1000 / 16 / 2
    np.testing.assert_allclose(out[0, 4:], [0, 10, min(22 + half, 200), 45], rtol=1e-5)


# ---------------------------------------------------------------------------------------- NMS
def test_nms_threshold_is_strict_and_ties_keep_torch_order(host_path):
    # IoU of these two is exactly 0.5: kept at threshold 0.5 (ovr > thr suppresses)
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], F32)
    scores = np.array([0.9, 0.8], F32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    # equal scores: the first in torch's sort order (stable below 17 boxes) wins
    same = np.array([0.7, 0.7], F32)
    assert nms(boxes, same, 0.3).tolist() == [0]
    assert nms(boxes[::-1].copy(), same, 0.3).tolist() == [0]


def test_nms_threshold_as_c_float(host_path):
    # IoU 0.7000000000000001 in float64 is float32 0.7 -> not above the float32 threshold
    inter, union = F32(7), F32(10)
    boxes = np.array([[0, 0, 10, 1], [0, 0, 7, 1]], F32)
    assert inter / union == F32(0.7)
    assert nms(boxes, np.array([1, 0.5], F32), 0.7).tolist() == [0, 1]


def test_batched_nms_keeps_groups_apart_and_orders_by_score(host_path):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], F32)
    scores = np.array([0.9, 0.8, 0.95, 0.1], F32)
    dets, keep = batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5)
    assert keep.tolist() == [2, 0, 3]
    np.testing.assert_array_equal(dets[:, 4], scores[keep])
    # above split_thr mmcv runs NMS per group, then sorts: same result here
    _, keep_split = batched_nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5, split_thr=2)
    assert keep_split.tolist() == [2, 0, 3]


def test_multiclass_nms_threshold_and_max_num():
    boxes = np.tile(np.array([[0, 0, 10, 10]], F32), (2, 2))  # 2 proposals, 2 classes
    boxes[1] += 1
    scores = np.array([[0.6, 0.05, 0.35], [0.5, 0.3, 0.2]], F32)  # background last
    dets, labels, rows = multiclass_nms(boxes, scores, 0.05, 0.5)
    # 0.05 is not above the threshold; class 0's second box overlaps the first
    assert labels.tolist() == [0, 1] and rows.tolist() == [0, 1]
    np.testing.assert_array_equal(dets[:, 4], np.array([0.6, 0.3], F32))
    assert len(multiclass_nms(boxes, scores, 0.05, 0.5, max_num=1)[0]) == 1
    assert multiclass_nms(boxes, scores, 0.9, 0.5)[0].shape == (0, 5)


# ----------------------------------------------------------------------------------- RoIAlign
def test_roi_align_on_a_ramp_is_the_mean_sample_position(host_path):
    # f(y, x) = x: bilinear sampling returns the sampled x, so each bin is the mean of its
    # samples' x: x1 - 0.5 + (pw + 0.5) * bin_w (aligned), whatever the grid
    h, w = 20, 40
    ramp = np.broadcast_to(np.arange(w, dtype=F32), (h, w))[..., None]
    rois = np.array([[6.0, 4.0, 16.0, 15.0], [3.25, 2.5, 30.75, 9.0]], F32)
    out = roi_align(ramp, rois, 7, 1.0)
    assert out.shape == (2, 7, 7, 1)
    for k, (x1, _, x2, _) in enumerate(rois):
        bin_w = (x2 - x1) / 7
        expected = x1 - 0.5 + (np.arange(7) + 0.5) * bin_w
        np.testing.assert_allclose(out[k, ..., 0], np.broadcast_to(expected, (7, 7)), atol=1e-5)


def test_roi_align_adaptive_grid_and_borders(host_path):
    feat = np.arange(6 * 8 * 2, dtype=F32).reshape(6, 8, 2)
    # a 2x2 RoI at scale 1 has a 1x1 grid per bin of a 2x2 output: samples at the bin centres
    out = roi_align(feat, np.array([[2, 1, 4, 3]], F32), 2, 1.0)
    ys, xs = np.array([1.0, 2.0]), np.array([2.0, 3.0])  # centres minus the half pixel
    expected = feat[ys.astype(int)][:, xs.astype(int)]
    np.testing.assert_allclose(out[0], expected)
    # entirely outside the map (samples beyond -1): zeros
    assert not roi_align(feat, np.array([[-50, -50, -40, -40]], F32), 2, 1.0).any()
    # an empty RoI has an empty grid: zeros
    assert not roi_align(feat, np.array([[3, 3, 3, 3]], F32), 2, 1.0).any()


def test_roi_levels_and_extraction(host_path):
    rois = np.array([[0, 0, 111, 111], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 900, 900],
                     [0, 0, 10, 10]], F32)
    assert map_roi_levels(rois, 4).tolist() == [0, 1, 2, 3, 0]
    feats = [np.full((64 // s, 64 // s, 1), s, F32) for s in (4, 8, 16, 32)]
    out = extract_roi_features(feats, rois[[0, 2, 4]] / 10, 2, (4, 8, 16, 32))
    assert out.shape == (3, 2, 2, 1) and np.all(out == 4)


@pytest.mark.parametrize('aligned,sampling_ratio', [(True, 0), (False, 0), (True, 2), (True, -1)])
def test_roi_align_kernel_equals_the_numpy_reference(aligned, sampling_ratio):
    """csrc/detection.cc's RoIAlign against the NumPy reference, bit for bit: RoIs of every size
    (grids 1 to 6 per bin), across the border, outside the map, empty and inverted."""
    rng = np.random.default_rng(21)
    feat = rng.normal(size=(23, 31, 19)).astype(F32)
    xy = rng.uniform(-20, 140, size=(300, 2)).astype(F32)
    wh = rng.uniform(0, 90, size=(300, 2)).astype(F32)
    rois = np.concatenate([xy, xy + wh], 1)
    rois[:5] = [[0, 0, 0, 0], [40, 40, 30, 30], [-90, -90, -60, -60], [0, 0, 124, 92],
                [123.5, 91.5, 124, 92]]
    assert dispatch.host_library('roi_align') is not None
    for size in (7, (5, 3)):
        got = roi_align(feat, rois, size, 0.25, sampling_ratio, aligned)
        want = roi_align_numpy(feat, rois, size, 0.25, sampling_ratio, aligned)
        assert got.shape == want.shape and np.array_equal(got, want)
    assert np.abs(want).sum(axis=(1, 2, 3)).min() == 0 and np.abs(want).max() > 0


def test_nms_kernel_equals_the_numpy_reference():
    """csrc/detection.cc's NMS loop against the NumPy reference on 3000 boxes in clusters (many
    IoUs near every threshold): the same boxes kept, in the same order."""
    rng = np.random.default_rng(22)
    centres = rng.uniform(0, 800, size=(60, 2))
    xy = (centres[rng.integers(0, 60, 3000)] + rng.normal(0, 6, size=(3000, 2))).astype(F32)
    wh = rng.uniform(5, 80, size=(3000, 2)).astype(F32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(size=3000).astype(F32)
    scores[::7] = scores[0]  # ties
    assert dispatch.host_library('nms') is not None
    order = torch_sort_desc(scores)
    for thr in (0.3, 0.5, 0.7):
        kept = nms(boxes, scores, thr)
        assert kept.tolist() == order[nms_sorted_numpy(boxes[order], thr)].tolist()
        assert 60 < len(kept) < 3000


# ------------------------------------------------------------------------------------- paste
def test_paste_constant_mask_covers_pixel_centres_in_the_box():
    mask = np.ones((1, 28, 28), F32)
    out = paste_masks(mask, np.array([[10, 20, 30, 40]], F32), 50, 60)
    expected = np.zeros((50, 60), bool)
    expected[20:40, 10:30] = True
    np.testing.assert_array_equal(out[0], expected)
    # below the threshold nowhere; a box outside the image pastes nothing
    assert not paste_masks(mask * 0.4, np.array([[10, 20, 30, 40]], F32), 50, 60).any()
    assert not paste_masks(mask, np.array([[70, 70, 80, 80]], F32), 50, 60).any()


# ------------------------------------------------------------------------------------- resize
def _pattern(h, w):
    return ((np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) * 37 +
             np.arange(h)[:, None, None] * 11) % 256).astype(np.uint8)


@pytest.mark.parametrize('h, w, nh, nw, digest', [
    (190, 290, 128, 195, 'eee605f53d424c70'), (75, 150, 112, 224, '6090aeedc6a06d9a'),
    (168, 105, 205, 128, 'c7049d551c0f3581'), (37, 53, 800, 1067, '85e97da62998c1f9'),
    (64, 96, 32, 48, 'b27a8c159695fd1d'), (333, 500, 800, 1201, 'ce124a292b8fcd20')])
def test_resize_equals_opencv_inter_linear(h, w, nh, nw, digest):
    # digests of cv2.resize(_pattern(h, w), (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = resize_bilinear(_pattern(h, w), (nw, nh))
    assert out.shape == (nh, nw, 3)
    assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == digest


def test_resize_halving_and_identity():
    img = np.array([[0, 1, 10, 20], [2, 2, 30, 41]], np.uint8)[:, :, None]
    # exactly half in both axes: OpenCV's 2x2 mean, (sum + 2) >> 2
    assert resize_bilinear(img, (2, 1))[..., 0].tolist() == [[1, 25]]
    assert np.array_equal(resize_bilinear(img, (4, 2)), img)


def test_rescale_size_is_mmcvs():
    assert rescale_size(640, 480, (1333, 800)) == ((1067, 800), 800 / 480)
    assert rescale_size(480, 640, (1333, 800))[0] == (800, 1067)  # short side to 800 either way
    assert rescale_size(2000, 500, (1333, 800))[0] == (1333, 333)
