"""Largest differences, stage by stage, between mindcoat's detectors and the official code's
outputs for the full-width fixtures (a dev tool: the shrunken fixtures in tests/fixtures/det are
checked by tests/test_detection_fixtures.py with the same comparisons as pass/fail).

    python tools/det/compare_stages.py --fixtures /work/refs/det-full

The fixtures are what ``tools/det/mmdet_reference.py fixtures --full`` writes: per detector
<name>_meta.json, <name>_random.pth and <name>_stages.npz, and images/. Prints, per detector and
photo, the largest absolute difference of each stage and that difference over the stage's
largest magnitude, then the detections (count, labels, boxes, scores) and the masks (pixels that
differ, the lowest IoU). Proposals are matched by box, as the tests match them: rows whose scores
tie to float rounding may come out in another order.
"""
import argparse
import json
import os
import sys

import numpy as np

NAMES = ('coat_lite_mini_3x', 'coat_mini_3x')


def _diff(mine, ref):
    mine, ref = np.asarray(mine, np.float64), np.asarray(ref, np.float64)
    if mine.shape != ref.shape:
        return f'shapes differ: {mine.shape} against {ref.shape}'
    if not mine.size:
        return 'empty on both sides'
    d = np.abs(mine - ref).max()
    return f'{d:.2e} (relative {d / max(np.abs(ref).max(), 1e-30):.1e})'


def _masks(ref, image):
    k, h, w = ref[f'{image}/masks_shape']
    return np.unpackbits(ref[f'{image}/masks_packed'], axis=1, count=h * w).reshape(
        k, h, w).astype(bool)


def compare(fixtures, name):
    import mindcoat
    from mindcoat.models.detection import collate, default_config, load_image, preprocess
    from dataclasses import replace
    with open(os.path.join(fixtures, f'{name}_meta.json')) as f:
        meta = json.load(f)
    if meta.get('overrides'):
        sys.exit(f'{name}: a shrunken fixture; tests/test_detection_fixtures.py compares those')
    config = default_config('mask_rcnn_' + name)
    config = replace(config, pipeline=replace(config.pipeline,
                                              img_scale=tuple(meta['test_img_scale'])))
    net = mindcoat.create_detector(config=config, log=lambda *a: None,
                                   checkpoint_path=os.path.join(fixtures, f'{name}_random.pth'))
    net.set_train(False)
    ref = np.load(os.path.join(fixtures, f'{name}_stages.npz'))
    for image in ref['images']:
        image = str(image)
        tensor, img_meta = preprocess(load_image(os.path.join(fixtures, 'images', f'{image}.png')),
                                      net.config.pipeline)
        st = net.predict_stages(collate([(tensor, img_meta)]))
        print(f'{name} {image}')
        print(f'  input            equal: {np.array_equal(tensor[None], ref[f"{image}/input"])}')
        for key, count in (('backbone', 4), ('fpn', 5), ('rpn_cls', 5), ('rpn_bbox', 5)):
            diffs = [_diff(st[key][i], ref[f'{image}/{key}.{i}']) for i in range(count)]
            print(f'  {key:<16} ' + '; '.join(diffs))
        mine_p, ref_p = st['proposals'], ref[f'{image}/proposals']
        where = np.arange(len(ref_p))
        if len(mine_p) == len(ref_p) and len(ref_p):
            # rows whose scores tie to float rounding may come out swapped: match by box
            gap = np.abs(mine_p[None, :, :4] - ref_p[:, None, :4]).max(-1)
            where = gap.argmin(1)
            moved = int((where != np.arange(len(ref_p))).sum())
            print(f'  proposals        {len(ref_p)} on both sides, every reference box within '
                  f'{gap.min(1).max():.2e} px of one of ours, {moved} rows in another place')
        else:
            print(f'  proposals        {len(mine_p)} / {len(ref_p)}')
        feats = ref[f'{image}/bbox_roi_feats']
        print(f'  bbox_roi_feats   {_diff(st["bbox_roi_feats"][where[:len(feats)]], feats)}')
        dets, ref_dets = st['det_bboxes'], ref[f'{image}/det_bboxes']
        labels_equal = np.array_equal(st['det_labels'], ref[f'{image}/det_labels'])
        print(f'  detections       {len(dets)} / {len(ref_dets)}, labels equal: {labels_equal}')
        if len(dets) == len(ref_dets):
            print(f'    boxes (px)     {_diff(dets[:, :4], ref_dets[:, :4])}')
            print(f'    scores         {_diff(dets[:, 4], ref_dets[:, 4])}')
            print(f'  mask_pred        {_diff(st["mask_pred"], ref[f"{image}/mask_pred"])}')
            _, segm = st['detections'].to_mmdet(net.num_classes)
            mine = np.stack([m for cls in segm for m in cls])
            theirs = _masks(ref, image)
            if mine.shape == theirs.shape:
                inter = np.logical_and(mine, theirs).sum((1, 2))
                union = np.logical_or(mine, theirs).sum((1, 2))
                iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # both empty: 1
                print(f'  masks            {int((mine != theirs).sum())} of {mine.size} pixels '
                      f'differ, lowest IoU {iou.min():.4f}')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--fixtures', required=True, help='directory of full-width fixtures')
    p.add_argument('--names', nargs='+', default=list(NAMES))
    args = p.parse_args(argv)
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE)
    for name in args.names:
        compare(args.fixtures, name)


if __name__ == '__main__':
    main()
