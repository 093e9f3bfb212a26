"""COCO's formats written without pycocotools: the compressed RLE of a mask must be the very
string pycocotools writes (its AP evaluation reads ours), on random masks and on the official
detector's masks of the detection fixtures; the category ids are COCO's."""
import os

import numpy as np
import pytest

from mindcoat.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, decode_rle, encode_rle, \
    result_records
from train_helpers import REPO

mask_api = pytest.importorskip('pycocotools.mask')  # in the [test] extra: CI runs this


def fixture_masks():
    data = np.load(os.path.join(REPO, 'tests', 'fixtures', 'det', 'coat_lite_mini_3x_stages.npz'))
    out = []
    for image in data['images']:
        h, w = (int(v) for v in data[f'{image}/masks_shape'][1:])
        packed = data[f'{image}/masks_packed']
        out += list(np.unpackbits(packed, axis=1, count=h * w).reshape(-1, h, w).astype(bool))
    return out


def test_rle_is_the_string_pycocotools_writes():
    rng = np.random.default_rng(0)
    masks = fixture_masks()
    assert len(masks) > 50 and any(m.any() for m in masks)
    for t in range(200):
        h, w = rng.integers(1, 50, 2)
        mask = rng.random((h, w)) < rng.random()
        masks.append(mask if t % 9 else np.zeros((h, w), bool) if t % 2 else np.ones((h, w), bool))
    for mask in masks:
        ours = encode_rle(mask)
        theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours['counts'] == theirs['counts'].decode() and ours['size'] == theirs['size']
        np.testing.assert_array_equal(decode_rle(ours), mask)
        assert int(mask_api.area(theirs)) == int(mask.sum())


def test_records_use_coco_category_ids():
    assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80
    assert COCO_CLASSES[0] == 'person' and COCO_CATEGORY_IDS[-1] == 90
    assert len(set(COCO_CATEGORY_IDS)) == 80 and 12 not in COCO_CATEGORY_IDS
    boxes = np.array([[10.0, 20.0, 30.5, 60.0]])
    mask = np.zeros((1, 70, 40), bool)
    mask[0, 20:60, 10:30] = True
    rec, = result_records(7, boxes, [0.9], [11], mask, 'a.jpg')
    assert rec['image_id'] == 7 and rec['category_id'] == 13 and rec['file_name'] == 'a.jpg'
    assert rec['bbox'] == [10.0, 20.0, 20.5, 40.0] and rec['score'] == 0.9
    assert isinstance(rec['segmentation']['counts'], str)
    np.testing.assert_array_equal(decode_rle(rec['segmentation']), mask[0])
