"""COCO's formats: masks as COCO's compressed run-length encoding and detections as COCO result
records (category ids 1-90, with gaps; the detector registry holds the classes). NumPy only, so
results are written without pycocotools (which stays optional, for AP)."""
import numpy as np

from ..models.detection.registry import COCO_CATEGORY_IDS, COCO_CLASSES

__all__ = ['COCO_CATEGORY_IDS', 'COCO_CLASSES', 'run_lengths', 'encode_rle', 'decode_rle',
           'result_records']


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
