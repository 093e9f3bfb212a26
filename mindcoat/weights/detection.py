"""Detector weights: MMDetection checkpoints of the CoaT Mask R-CNN detectors, and classifier
weights for a detector's backbone.

An MMDetection checkpoint is a torch pickle ``{'meta': {...}, 'state_dict': {...}}`` read by the
safe reader (``readers.read_any``); its keys are the detector's parameter names, with the
backbone's shared cpe/crpe modules repeated under every path (collapsed as the classifier's
are, ``mapping.canonical_name``). Loading is all or nothing: every key and shape is checked
before the first parameter is assigned, and each refusal is one line (a classifier file given as
a detector, another variant, another number of classes, missing or unexpected keys).

mindcoat's own detector checkpoint (``save_detector_ckpt``, what ``mindcoat.convert`` writes) is
a MindSpore .ckpt of the same parameter names, read back by the same loader, with the format,
the detector's name, its settings and its class names appended as strings.
"""
import json
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from ..models.detection.registry import DETECTORS, checkpoint_file
from ..models.detection.settings import as_yaml_dict
from .checkpoint import save_ckpt
from .hub import base_url, hash_prefix_of
from .loading import _preview, architecture, first_nonfinite, likely_variant, nonfinite_hint, \
    read_weights
from .mapping import canonical_name, select_weights
from .readers import as_numpy, read_any

_PARTS = ('backbone.', 'neck.', 'rpn_head.', 'roi_head.')
_BACKBONE = 'backbone.'
DETECTOR_FORMAT = 'mindcoat-detector-v1'


def detector_pretrained_cfg(name):
    """Where detector ``name``'s official checkpoint is: {'url', 'file', 'hash_prefix'}; the
    classifier downloads' base URL ($MINDCOAT_WEIGHTS_URL) + 'tasks/mmdet/'."""
    file_name = checkpoint_file(name)
    return {'url': base_url() + 'tasks/mmdet/' + file_name, 'file': file_name,
            'hash_prefix': hash_prefix_of(file_name)}


def _state_dict(tree, path):
    """The flat weights of a file, whatever it nests them in (an MMDetection file under
    'state_dict')."""
    return select_weights(tree, False, str(path))


def canonical_detector_name(key):
    """A detector key with the backbone's shared-module aliases collapsed."""
    if key.startswith(_BACKBONE):
        return _BACKBONE + canonical_name(key[len(_BACKBONE):])
    return key


def read_detector_weights(path, max_gb=None):
    """{canonical key: numpy array} of an MMDetection checkpoint, and the alias keys whose
    values differ from their canonical copy. A classifier's weights are refused in one line."""
    ckpt = read_detector_checkpoint(path, max_gb)
    return ckpt.weights, ckpt.conflicts


def _detector_weights(tensors, path):
    if not any(k.startswith(_PARTS) for k in tensors):
        if 'patch_embed1.proj.weight' in tensors or 'cls_token1' in tensors:
            raise CheckpointError(
                f"{path} holds a CoaT classifier, not a detector (no backbone./neck./rpn_head./"
                "roi_head. keys); give it as backbone_checkpoint= to initialise the backbone")
        raise CheckpointError(f"{path}: not an MMDetection detector checkpoint (first keys: "
                              f"{_preview(list(tensors), 4)})")
    out, conflicts = {}, []
    for key, value in tensors.items():
        name = canonical_detector_name(key)
        array = as_numpy(value)
        if name in out:
            if out[name].shape != array.shape or not np.array_equal(out[name], array):
                conflicts.append(key)
            continue
        out[name] = array
    return out, conflicts


def _backbone_shapes(shapes):
    return {k[len(_BACKBONE):]: v for k, v in shapes.items() if k.startswith(_BACKBONE)}


def _describe(arch):
    return ', '.join(f"{k}={v}" for k, v in arch.items() if k != 'mlp_ratios')


def _check_variant(net, path, weights, params):
    """Another backbone or another number of classes is refused with what the file holds."""
    theirs = architecture(_backbone_shapes({k: v.shape for k, v in weights.items()}))
    ours = architecture(_backbone_shapes({k: tuple(p.shape) for k, p in params.items()}))
    name = getattr(net, 'name', 'this detector')
    if 'embed_dims' in theirs and theirs != {k: ours.get(k) for k in theirs}:
        arches = likely_variant(theirs)
        detectors = [d for d, v in DETECTORS.items() if v['backbone'] in arches]
        which = f" ({' or '.join(detectors)})" if detectors else ''
        raise CheckpointError(f"{path} holds a detector on another backbone{which}: "
                              f"{_describe(theirs)}, not {name}'s {_describe(ours)}")
    key = 'roi_head.bbox_head.fc_cls.weight'
    if key in weights and key in params and weights[key].shape != tuple(params[key].shape):
        theirs_n, ours_n = weights[key].shape[0] - 1, params[key].shape[0] - 1
        raise CheckpointError(f"{path} holds a detector for {theirs_n} classes, {name} has "
                              f"{ours_n}: create it with num_classes={theirs_n}")


def _assignments(params, weights, path, name):
    """Every (parameter, value) pair, after checking keys, shapes and dtypes."""
    missing = [k for k in params if k not in weights]
    unexpected = [k for k in weights if k not in params]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_preview(missing, 3)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_preview(unexpected, 3)})")
        raise CheckpointError(f"{path} does not fit {name}: {'; '.join(parts)}")
    out, mismatched = [], []
    for key, param in params.items():
        value = weights[key]
        if value.dtype.kind != 'f':
            raise CheckpointError(f"{path}: weight {key} is {value.dtype}, not floating point")
        if tuple(value.shape) != tuple(param.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model "
                              f"{tuple(param.shape)}")
            continue
        out.append((param, value))
    if mismatched:
        raise CheckpointError(f"{path} does not fit {name} ({len(mismatched)} shape "
                              f"mismatches, e.g. {mismatched[0]})")
    return out


def _assign(pairs, path):
    import mindspore as ms
    bad = first_nonfinite((param.name, value) for param, value in pairs)
    if bad is not None:
        raise CheckpointError(f"{path}: weight '{bad}' holds NaN or Inf values; nothing was "
                              f"loaded. {nonfinite_hint()}")
    for param, value in pairs:
        param.set_data(ms.Tensor(np.ascontiguousarray(value, np.float32), dtype=param.dtype))


@dataclass(frozen=True)
class DetectorCheckpoint:
    """One read of a detector checkpoint: its weights under canonical names, the alias keys
    whose values differ from their canonical copy, and what the file says about its detector
    (``detector_checkpoint_info``)."""
    path: str
    weights: dict
    conflicts: list
    info: dict


def read_detector_checkpoint(path, max_gb=None):
    """Reads an MMDetection checkpoint (or mindcoat's detector .ckpt) once, for both what it
    says and what it loads. A classifier's weights are refused in one line."""
    tree = read_any(path, max_gb)
    weights, conflicts = _detector_weights(_state_dict(tree, path), path)
    return DetectorCheckpoint(str(path), weights, conflicts, _checkpoint_info(tree, weights, path))


def load_detector_weights(net, source, log=print, max_gb=None):
    """Loads a detector checkpoint (a path, or a DetectorCheckpoint already read) into ``net``
    (a MaskRCNN), all or nothing. Returns the number of parameters loaded."""
    ckpt = source if isinstance(source, DetectorCheckpoint) else \
        read_detector_checkpoint(source, max_gb)
    path, weights = ckpt.path, ckpt.weights
    params = {p.name: p for p in net.get_parameters()}
    _check_variant(net, path, weights, params)
    pairs = _assignments(params, weights, path, getattr(net, 'name', 'this detector'))
    _assign(pairs, path)
    log(f"loaded {len(pairs)}/{len(params)} parameters from {path}")
    if ckpt.conflicts:
        log("warning: shared-module copies differ from the canonical copy (canonical used): "
            + _preview(ckpt.conflicts))
    return len(pairs)


def _backbone_source(path, max_gb):
    """{backbone parameter name: array} from a classifier file of any supported format, or from
    a detector checkpoint's backbone."""
    tensors = _state_dict(read_any(path, max_gb), path)
    if any(k.startswith(_BACKBONE) for k in tensors):
        weights, _ = _detector_weights(tensors, path)
        return {k[len(_BACKBONE):]: v for k, v in weights.items() if k.startswith(_BACKBONE)}
    weights, _ = read_weights(path, max_gb=max_gb)
    return weights


def load_backbone_weights(net, path, log=print, max_gb=None):
    """Initialises ``net``'s backbone from ``path``: any classifier file mindcoat loads (the
    official .pth, timm, MindCV, mindcoat) or a detector checkpoint; the classifier's head and
    final norms are not used. All or nothing; another variant is refused in one line."""
    weights = _backbone_source(path, max_gb)
    params = {p.name[len(_BACKBONE):]: p for p in net.backbone.get_parameters()}
    theirs = architecture({k: tuple(v.shape) for k, v in weights.items()})
    ours = architecture({k: tuple(p.shape) for k, p in params.items()})
    if 'embed_dims' in theirs and theirs != {k: ours.get(k) for k in theirs}:
        names = likely_variant(theirs)
        which = f" ({' or '.join(names)})" if names else ''
        raise CheckpointError(f"{path} holds another CoaT{which}: {_describe(theirs)}, the "
                              f"detector's backbone is {_describe(ours)}")
    missing = [k for k in params if k not in weights]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} backbone parameters missing "
                              f"({_preview(missing, 3)}); not CoaT weights for this backbone")
    pairs = _assignments(params, {k: weights[k] for k in params}, path, 'the backbone')
    _assign(pairs, path)
    ignored = [k for k in weights if k not in params]
    log(f"backbone: loaded {len(pairs)}/{len(params)} parameters from {path}"
        + (f" ({len(ignored)} other keys not used, e.g. {_preview(ignored, 2)})"
           if ignored else ''))
    return len(pairs)


def detector_checkpoint_info(path, max_gb=None):
    """What an MMDetection checkpoint (or mindcoat's detector .ckpt) says about its detector,
    without building one: 'backbone' (the classifier variant whose architecture its backbone
    has, when one matches), 'detectors' (the registered detectors on that backbone, the one the
    file names first), 'num_classes' (rows of the box classifier, background excluded),
    'class_names' (the meta's CLASSES or the stored names, when there is one per class), and
    from a mindcoat .ckpt 'model' and 'config' (the settings it was converted with, as the YAML
    mapping); None where the file does not say."""
    return read_detector_checkpoint(path, max_gb).info


def _checkpoint_info(tree, weights, path):
    """detector_checkpoint_info of the file read as ``tree``, whose canonical ``weights``
    ``_detector_weights`` took from it."""
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    arches = likely_variant(architecture(_backbone_shapes(shapes)))
    stored = _stored_settings(tree, path)
    detectors = [d for d, v in DETECTORS.items() if v['backbone'] in arches]
    if stored['model'] in detectors:  # same backbone, other schedule: the file's own first
        detectors.remove(stored['model'])
        detectors.insert(0, stored['model'])
    info = {'backbone': arches[0] if len(arches) == 1 else None, 'detectors': detectors,
            'model': stored['model'], 'config': stored['config']}
    cls = shapes.get('roi_head.bbox_head.fc_cls.weight')
    info['num_classes'] = cls[0] - 1 if cls and len(cls) == 2 else None
    names = _meta_class_names(tree) or stored['class_names']
    if isinstance(names, (list, tuple)) and len(names) == info['num_classes'] and \
            all(isinstance(n, str) for n in names):
        info['class_names'] = tuple(names)
    else:
        info['class_names'] = None
    return info


def _meta_class_names(tree):
    meta = tree.get('meta') if isinstance(tree, dict) else None
    return meta.get('CLASSES') if isinstance(meta, dict) else None


def _stored_settings(tree, path):
    """'model', 'config' and 'class_names' a mindcoat detector .ckpt appended (None each for
    any other file); stored JSON that does not parse is a damaged file."""
    out = dict.fromkeys(('model', 'config', 'class_names'))
    if not isinstance(tree, dict) or str(tree.get('format', '')) != DETECTOR_FORMAT:
        return out
    model = tree.get('model')
    out['model'] = model if isinstance(model, str) else None
    for key, kind in (('config', dict), ('class_names', list)):
        if key not in tree:
            continue
        try:
            value = json.loads(str(tree[key]))
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise CheckpointError(f"{path}: a mindcoat detector checkpoint whose stored {key} is "
                                  "not valid JSON; the file is damaged")
        out[key] = value
    return out


def save_detector_ckpt(path, net, class_names=None):
    """Writes ``net``'s parameters (MMDetection's names, what load_detector_weights reads) to
    ``path`` with a CRC, all or nothing, appending the format, ``net.name``, ``net.config`` (the
    YAML mapping, as JSON) and ``class_names`` when given."""
    append = {'format': DETECTOR_FORMAT, 'model': net.name,
              'config': json.dumps(as_yaml_dict(net.config))}
    if class_names is not None:
        append['class_names'] = json.dumps(list(class_names))
    save_ckpt(path, list(net.get_parameters()), append)
