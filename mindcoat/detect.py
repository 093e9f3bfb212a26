"""Detect objects and their masks with a CoaT Mask R-CNN + FPN (the official MMDetection models).

    python -m mindcoat.detect --config configs/det/mask_rcnn_coat_lite_mini_3x.yaml \\
        --ckpt_path mask_rcnn_coat_lite_mini_3x.pth photo1.jpg photo2.jpg some_folder/ \\
        --out_dir out/
    python -m mindcoat.detect ... --image_dir val2017/ --ann_file instances_val2017.json

Writes ``out_dir/detections.json`` in COCO's results format (image_id, COCO's category_id,
bbox [x, y, w, h] in the original image's pixels, score, segmentation as compressed RLE) plus
``file_name`` on every record, and one PNG per image with the boxes, class names and masks
drawn. Images are numbered in the order given (a folder expands in sorted order); with
``--ann_file`` the images and their ids come from the annotation file, and the run ends with
pycocotools' bbox and segm AP (``pip install 'mindcoat[det]'``). An image that does not decode
is named, skipped and counted; the exit status is then 1.

Each padded image shape compiles its own graphs, and MindSpore keeps every graph's memory (about
0.2 GB per shape for CoaT-Lite Mini at 1333x800). So the images run grouped by padded shape
(from their headers; each group in the given order) and the graphs' memory is released between
groups: a folder of mixed sizes (COCO's val2017 has dozens of shapes) compiles each shape once
and stays at about one shape's memory. The records are written in the given order.
"""
import argparse
import json
import os
import sys

import numpy as np

from .cli import run
from .errors import DataError, UsageError
from .fileio import not_a_file, write_text

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MAX_ANN_BYTES = 2 << 30


def build_parser():
    p = argparse.ArgumentParser(prog='python -m mindcoat.detect',
                                description='Instance segmentation with a CoaT Mask R-CNN.')
    p.add_argument('images', nargs='*', help='image files and folders (a folder: its images, '
                                             'sorted by name)')
    p.add_argument('-c', '--config', help='detector YAML (configs/det/*.yaml)')
    p.add_argument('--model', help="registered detector, e.g. mask_rcnn_coat_lite_mini_3x "
                                   "(default: the config's, else the checkpoint's)")
    p.add_argument('--ckpt_path', help='MMDetection checkpoint (the official .pth files)')
    p.add_argument('--pretrained', action='store_true',
                   help="download the detector's official checkpoint")
    p.add_argument('--out_dir', default='detections', help='detections.json and the PNGs')
    p.add_argument('--image_dir', help='with --ann_file: the folder holding its images')
    p.add_argument('--ann_file', help='COCO annotations: their images, then bbox and segm AP')
    p.add_argument('--limit', type=int, help='only the first N images')
    p.add_argument('--no_png', action='store_true', help='write detections.json only')
    p.add_argument('--draw_thr', type=float, default=0.3,
                   help='score from which a detection is drawn in the PNGs (default 0.3)')
    p.add_argument('--canvas', type=int, nargs=2, metavar=('H', 'W'),
                   help='pad every image to one shape (one compiled graph; not bit-equal to '
                        "the official /32 padding)")
    p.add_argument('--device_target', help='CPU / GPU / Ascend (default: what MindSpore finds)')
    return p


# ------------------------------------------------------------------------------- the images
def folder_images(folder):
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.')]


def listed_images(paths):
    """[(image_id, path, file_name)] numbered 1.. in the order given, folders expanded."""
    out = []
    for path in paths:
        for item in folder_images(path) if os.path.isdir(path) else [path]:
            out.append((len(out) + 1, item, os.path.basename(item)))
    return out


def annotated_images(ann_file, image_dir):
    """[(image_id, path, file_name)] of a COCO annotation file's images; one line for a file
    that does not parse or lists images the folder lacks."""
    reason = not_a_file(ann_file)
    if reason:
        raise UsageError(f"--ann_file {ann_file}: {reason}")
    if os.path.getsize(ann_file) > MAX_ANN_BYTES:
        raise UsageError(f"--ann_file {ann_file} is larger than 2 GB: not an annotation file")
    try:
        with open(ann_file, encoding='utf-8') as f:
            images = json.load(f)['images']
        entries = [(int(im['id']), os.path.join(image_dir, im['file_name']), im['file_name'])
                   for im in images]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise UsageError(f"--ann_file {ann_file} is not a COCO annotation file "
                         f"({type(e).__name__}: {str(e)[:80]})") from None
    missing = [name for _, path, name in entries if not os.path.isfile(path)]
    if missing:
        raise UsageError(f"{len(missing)} of the {len(entries)} images of {ann_file} are not in "
                         f"{image_dir}, e.g. {', '.join(missing[:3])}")
    return entries


# ---------------------------------------------------------------------------------- the model
def shape_groups(entries, settings):
    """(order, shapes): the positions of ``entries`` in the order to run them, images of one
    padded shape together (groups in order of first appearance, each in the given order), and
    each entry's padded shape (None when its header cannot be read: it goes last, to fail on
    decoding)."""
    from .models.detection import image_size, padded_shape, resized_size
    shapes = []
    for _, path, _ in entries:
        size = image_size(path)
        shapes.append(None if size is None else
                      padded_shape(*resized_size(*size, settings)[0], settings))
    first = {}
    for i, shape in enumerate(shapes):
        first.setdefault(shape, i)
    order = sorted(range(len(entries)), key=lambda i: (shapes[i] is None, first[shapes[i]], i))
    return order, shapes


def detector_for(args, log):
    """(the detector the arguments name: --config, else --model, else what the checkpoint
    holds; its class names: the checkpoint's, else COCO's for 80 classes, else numbers)."""
    from .config import find_config
    from .factory import create_detector
    from .models.detection import COCO_CLASSES
    config = find_config(args.config) if args.config else None
    if config is None and args.model is None and not args.ckpt_path:
        raise UsageError("say which detector: --config configs/det/<name>.yaml or --model NAME "
                         "(or --ckpt_path, whose weights tell)")
    net = create_detector(args.model, checkpoint_path=args.ckpt_path, pretrained=args.pretrained,
                          config=config, log=log)
    if args.canvas:
        from dataclasses import replace
        net.pipeline = replace(net.pipeline, canvas=tuple(args.canvas))
    names = net.class_names or (COCO_CLASSES if net.num_classes == 80 else
                                [f'class {i}' for i in range(net.num_classes)])
    return net, names


# -------------------------------------------------------------------------------- the outputs
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                     [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                     [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]], np.uint8)


def draw(image, dets, class_names, threshold):
    """The image with the detections scoring at least ``threshold``: translucent masks, boxes
    and "name score" labels (a PIL image)."""
    from PIL import Image, ImageDraw
    canvas = image.astype(np.float32)
    keep = [i for i in range(len(dets)) if dets.scores[i] >= threshold]
    for i in keep:
        if dets.masks is not None and dets.has_mask[i]:
            colour = _PALETTE[int(dets.labels[i]) % len(_PALETTE)]
            canvas[dets.masks[i]] = 0.55 * canvas[dets.masks[i]] + 0.45 * colour
    out = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(out)
    for i in keep:
        colour = tuple(int(c) for c in _PALETTE[int(dets.labels[i]) % len(_PALETTE)])
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        text = f"{class_names[int(dets.labels[i])]} {dets.scores[i]:.2f}"
        left, top, right, bottom = pen.textbbox((x1, y1), text)
        pen.rectangle([x1, y1 - (bottom - top) - 2, x1 + right - left + 4, y1], fill=colour)
        pen.text((x1 + 2, y1 - (bottom - top) - 2), text, fill=(0, 0, 0))
    return out


def coco_ap(ann_file, records, image_ids, log):
    """pycocotools' bbox and segm AP of ``records`` on ``image_ids``: {'bbox': stats, ...}."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UsageError("AP needs pycocotools, which is not installed: pip install "
                         "'mindcoat[det]' (or pip install pycocotools)") from None
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO(ann_file)
    stats = {}
    for kind in ('bbox', 'segm'):
        mine = [r for r in records if kind == 'bbox' or 'segmentation' in r]
        if not mine:
            log(f"no detections to score for {kind}: AP 0")
            stats[kind] = [0.0] * 12
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            found = truth.loadRes([dict(r) for r in mine])
            evaluation = COCOeval(truth, found, kind)
            evaluation.params.imgIds = list(image_ids)
            evaluation.evaluate()
            evaluation.accumulate()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            evaluation.summarize()
        log(f"{kind}:\n{printed.getvalue().rstrip()}")
        stats[kind] = [float(v) for v in evaluation.stats]
    return stats


# ----------------------------------------------------------------------------------- the run
def _main(argv):
    args = build_parser().parse_args(argv)
    if bool(args.ann_file) != bool(args.image_dir):
        raise UsageError("--ann_file and --image_dir go together (the annotation file's images "
                         "are read from --image_dir)")
    if args.ann_file and args.images:
        raise UsageError("give images or --ann_file with --image_dir, not both")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    if args.canvas and (min(args.canvas) < 32 or any(v % 32 for v in args.canvas)):
        raise UsageError(f"--canvas must be two positive multiples of 32, got {args.canvas}")
    entries = annotated_images(args.ann_file, args.image_dir) if args.ann_file else \
        listed_images(args.images)
    if not entries:
        raise UsageError("no images: give image files or folders, or --ann_file with "
                         "--image_dir")
    entries = entries[:args.limit] if args.limit else entries
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UsageError(f"--out_dir {args.out_dir} exists and is not a folder")
    os.environ.setdefault('GLOG_v', '3')
    import mindspore as ms
    from tqdm import tqdm
    from .models.detection import load_image
    if args.device_target:
        ms.set_device(args.device_target)
    ms.set_context(mode=ms.GRAPH_MODE)
    net, names = detector_for(args, print)
    os.makedirs(args.out_dir, exist_ok=True)
    from .data.coco import result_records
    order, shapes = shape_groups(entries, net.pipeline)
    per_entry, failed, done, running = {}, [], [], None
    for i in tqdm(order, desc='detect', unit='image', disable=not sys.stderr.isatty()):
        image_id, path, file_name = entries[i]
        try:
            image = load_image(path)
        except DataError as e:
            failed.append(path)
            print(f"error: {e}; skipped", file=sys.stderr, flush=True)
            continue
        if running is not None and shapes[i] != running:
            ms.ms_memory_recycle()  # the previous shape's graphs: not needed again
        running = shapes[i]
        dets = net.detect([image])[0]
        masks = dets.masks if dets.masks is not None else None
        records = result_records(image_id, dets.boxes, dets.scores, dets.labels, masks,
                                 file_name)
        if masks is not None:  # a detection the official code gives no mask keeps none
            for record, has in zip(records, dets.has_mask):
                if not has:
                    record.pop('segmentation')
        per_entry[i] = records
        if not args.no_png:
            stem = os.path.splitext(file_name)[0].replace(os.sep, '_')
            draw(image, dets, names, args.draw_thr).save(
                os.path.join(args.out_dir, f'{image_id:06d}_{stem}.png'))
        done.append(image_id)
    records = [r for i in sorted(per_entry) for r in per_entry[i]]
    out = os.path.join(args.out_dir, 'detections.json')
    write_text(out, json.dumps(records))
    print(f"{len(done)} of {len(entries)} images, {len(records)} detections -> {out}"
          + (f"; {len(failed)} could not be read: {', '.join(failed[:5])}" if failed else ''))
    if args.ann_file and done:
        coco_ap(args.ann_file, records, done, print)
    return 1 if failed else 0


def main(argv=None):
    return run(_main, argv)


if __name__ == '__main__':
    sys.exit(main())
