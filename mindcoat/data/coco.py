"""COCO's formats: the 80 detection classes and their category ids (1-90, with gaps), masks as
COCO's compressed run-length encoding, and detections as COCO result records. NumPy only, so
results are written without pycocotools (which stays optional, for AP)."""
import numpy as np

# the 80 classes in the order of a detector's labels (mmdet's CocoDataset.CLASSES)
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich',
    'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote',
    'keyboard', 'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book',
    'clock', 'vase', 'scissors', 'teddy bear', 'hair drier', 'toothbrush')
# label i -> COCO category id (the annotation files' ids skip 12, 26, 29, 30, 45, 66, 68, 69,
# 71, 83)
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)


def run_lengths(mask):
    """COCO's runs of a binary (H, W) mask: column by column, starting with a run of zeros
    (possibly empty)."""
    flat = np.asarray(mask, dtype=bool).ravel(order='F')
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def encode_rle(mask):
    """``{'size': [H, W], 'counts': str}``: COCO's compressed RLE of a binary mask (each run,
    past the second, as its difference from the run two before, in 5-bit groups offset by 48:
    the format pycocotools reads)."""
    mask = np.asarray(mask)
    counts = run_lengths(mask)
    chars = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic: negative differences keep their sign
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(group + 48 + (0x20 if more else 0)))
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': ''.join(chars)}


def decode_rle(rle):
    """The binary (H, W) mask of a compressed COCO RLE (the inverse of encode_rle)."""
    text, counts, pos = rle['counts'], [], 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[pos]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    h, w = rle['size']
    flat = np.zeros(h * w, dtype=bool)
    start = 0
    for i, count in enumerate(counts):
        if i % 2:
            flat[start:start + count] = True
        start += count
    return flat.reshape((w, h)).T


def result_records(image_id, boxes, scores, labels, masks=None, file_name=None):
    """COCO result records of one image's detections: ``boxes`` (n, 4) x1, y1, x2, y2 in the
    original image's pixels, ``labels`` 0-79; ``masks`` (n, H, W) binary or None."""
    out = []
    for i in range(len(boxes)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        record = {'image_id': int(image_id),
                  'category_id': COCO_CATEGORY_IDS[int(labels[i])],
                  'bbox': [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                  'score': round(float(scores[i]), 5)}
        if masks is not None:
            record['segmentation'] = encode_rle(masks[i])
        if file_name is not None:
            record['file_name'] = file_name
        out.append(record)
    return out
