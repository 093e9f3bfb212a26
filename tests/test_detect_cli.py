"""python -m mindcoat.detect as a user runs it, on the official detector's fixture (a shrunken
CoaT-Lite Mini Mask R-CNN with random official-init weights, tests/fixtures/det): the COCO JSON
holds the official code's detections (boxes, COCO category ids, scores, masks as RLE), one PNG
per image is drawn, a COCO annotation file's images are scored with pycocotools' AP, and bad
input is one line."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from mindcoat.data.coco import COCO_CATEGORY_IDS, decode_rle
from test_detection_fixtures import FIXTURES, shrunken_config
from train_helpers import env

NAME = 'coat_lite_mini_3x'
CKPT = os.path.join(FIXTURES, f'{NAME}_random.pth')
IMAGES = os.path.join(FIXTURES, 'images')


def detect(args, cwd):
    return subprocess.run([sys.executable, '-m', 'mindcoat.detect'] + [str(a) for a in args],
                          cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    from mindcoat.models.detection import as_yaml_dict
    path = tmp_path_factory.mktemp('cfg') / 'shrunken.yaml'
    path.write_text(yaml.safe_dump(as_yaml_dict(shrunken_config(NAME)), sort_keys=False))
    return str(path)


def official_results():
    """Per image file name: (boxes, scores, category ids, masks) of the official code."""
    data = np.load(os.path.join(FIXTURES, f'{NAME}_stages.npz'))
    out = {}
    for image in data['images']:
        h, w = (int(v) for v in data[f'{image}/masks_shape'][1:])
        masks = np.unpackbits(data[f'{image}/masks_packed'], axis=1, count=h * w)
        labels = data[f'{image}/result_labels']
        assert (data[f'{image}/mask_labels'] == labels).all()
        out[f'{image}.png'] = (data[f'{image}/result_bboxes'][:, :4],
                               data[f'{image}/result_bboxes'][:, 4],
                               np.array([COCO_CATEGORY_IDS[int(c)] for c in labels]),
                               masks.reshape(-1, h, w).astype(bool))
    return out


def by_key(boxes, scores, cats):
    """Row order independent of the class grouping: sorted by (category, score)."""
    return np.lexsort((-np.asarray(scores), np.asarray(cats)))


def assert_official(records, files):
    """``records`` (detections.json) hold the official detections of ``files``, numbered 1...
    in that order."""
    ref = official_results()
    for image_id, name in enumerate(files, 1):
        mine = [r for r in records if r['image_id'] == image_id]
        assert {r['file_name'] for r in mine} == {name}
        boxes, scores, cats, masks = ref[name]
        assert len(mine) == len(boxes) > 0
        xywh = np.array([r['bbox'] for r in mine])
        got_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        got_scores = np.array([r['score'] for r in mine])
        got_cats = np.array([r['category_id'] for r in mine])
        a, b = by_key(got_boxes, got_scores, got_cats), by_key(boxes, scores, cats)
        np.testing.assert_array_equal(got_cats[a], cats[b])
        np.testing.assert_allclose(got_boxes[a], boxes[b], atol=1e-2)
        np.testing.assert_allclose(got_scores[a], scores[b], atol=1e-3)
        for i, j in zip(a, b):
            got = decode_rle(mine[i]['segmentation'])
            inter, union = (got & masks[j]).sum(), (got | masks[j]).sum()
            assert union == 0 or inter / union > 0.95


def test_json_and_pngs_hold_the_official_detections(config, tmp_path):
    proc = detect(['--config', config, '--ckpt_path', CKPT, IMAGES, '--out_dir', 'out'],
                  tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    files = sorted(os.listdir(IMAGES))
    assert sorted(os.listdir(tmp_path / 'out')) == \
        sorted([f'{i + 1:06d}_{os.path.splitext(f)[0]}.png' for i, f in enumerate(files)] +
               ['detections.json'])
    assert_official(records, files)


def test_mixed_shapes_run_grouped_and_keep_the_given_order(config, tmp_path):
    """Files whose padded shapes alternate (chelsea and coffee share one, astronaut has its own):
    they run grouped by shape, the graphs' memory released between the groups, and the records
    come out in the given order with the official detections."""
    from mindcoat.detect import listed_images, shape_groups
    from mindcoat.models.detection import load_detector_config
    files = ['chelsea.png', 'astronaut.png', 'coffee.png']
    entries = listed_images([os.path.join(IMAGES, f) for f in files])
    order, shapes = shape_groups(entries, load_detector_config(config).pipeline)
    assert order == [0, 2, 1] and shapes[0] == shapes[2] != shapes[1]
    proc = detect(['--config', config, '--ckpt_path', CKPT, '--out_dir', 'out', '--no_png']
                  + [os.path.join(IMAGES, f) for f in files], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    ids = [r['image_id'] for r in records]
    assert ids == sorted(ids) and set(ids) == {1, 2, 3}
    assert_official(records, files)


def test_ann_file_images_are_scored_with_coco_ap(config, tmp_path):
    """The official detections as ground truth: the detector's own AP must be 1.0 for boxes
    and masks (and the images and ids come from the annotation file)."""
    pytest.importorskip('pycocotools')
    from mindcoat.data.coco import encode_rle
    ref = official_results()
    images, annotations = [], []
    for k, name in enumerate(sorted(ref)):
        image_id = 100 + k
        boxes, _, cats, masks = ref[name]
        h, w = masks.shape[1:]
        images.append({'id': image_id, 'file_name': name, 'height': h, 'width': w})
        for box, cat, mask in zip(boxes, cats, masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                                'category_id': int(cat), 'bbox': [x1, y1, x2 - x1, y2 - y1],
                                'area': float(mask.sum()), 'iscrowd': 0,
                                'segmentation': encode_rle(mask)})
    ann = tmp_path / 'instances.json'
    ann.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': [
        {'id': c, 'name': str(c)} for c in COCO_CATEGORY_IDS]}))
    proc = detect(['--config', config, '--ckpt_path', CKPT, '--image_dir', IMAGES, '--ann_file',
                   ann, '--out_dir', 'out', '--no_png'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    assert {r['image_id'] for r in records} == {100, 101, 102}
    assert os.listdir(tmp_path / 'out') == ['detections.json']
    for kind in ('bbox', 'segm'):
        block = proc.stdout.split(f'{kind}:')[1]
        first = block.strip().splitlines()[0]  # AP @[ IoU=0.50:0.95 | area= all | ... ] = x
        assert first.startswith('Average Precision') and float(first.split('=')[-1]) > 0.99, \
            block


def test_bad_input_is_one_line(config, tmp_path):
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8\xff\xe0 not a JPEG')
    good = os.path.join(IMAGES, sorted(os.listdir(IMAGES))[0])
    # an image that does not decode: named, skipped, counted, exit 1; the rest are detected
    proc = detect(['--config', config, '--ckpt_path', CKPT, broken, good, '--out_dir', 'out',
                   '--no_png'], tmp_path)
    assert proc.returncode == 1
    assert [line for line in proc.stderr.splitlines() if line.startswith('error:')] == \
        [line for line in proc.stderr.splitlines() if 'broken.jpg' in line and 'skipped' in line]
    assert '1 of 2 images' in proc.stdout and '1 could not be read' in proc.stdout
    records = json.loads((tmp_path / 'out' / 'detections.json').read_text())
    assert {r['image_id'] for r in records} == {2}
    # an annotation file that does not parse, or lists missing images: before any model
    (tmp_path / 'bad.json').write_text('{"images": [')
    proc = detect(['--config', config, '--ckpt_path', CKPT, '--image_dir', IMAGES,
                   '--ann_file', tmp_path / 'bad.json'], tmp_path)
    assert proc.returncode == 2 and 'is not a COCO annotation file' in one_error_line(proc)
    (tmp_path / 'missing.json').write_text(json.dumps({'images': [
        {'id': 1, 'file_name': 'nowhere.jpg'}]}))
    proc = detect(['--config', config, '--ckpt_path', CKPT, '--image_dir', IMAGES,
                   '--ann_file', tmp_path / 'missing.json'], tmp_path)
    assert proc.returncode == 2 and '1 of the 1 images' in one_error_line(proc)
    # a classifier checkpoint given as a detector
    import mindcoat
    from mindcoat.weights import save_ckpt
    classifier = tmp_path / 'classifier.ckpt'
    save_ckpt(str(classifier), mindcoat.create_model(
        'coat_lite_mini', embed_dims=(32, 48, 64, 96), serial_depths=(2, 1, 1, 1),
        log=lambda *a: None))
    proc = detect(['--config', config, '--ckpt_path', classifier, good], tmp_path)
    assert proc.returncode == 1
    assert 'classifier' in one_error_line(proc)
    assert not os.path.exists(tmp_path / 'detections')
    shutil.rmtree(tmp_path / 'out')
