"""mindcoat's own MindSpore checkpoints: written whole or not at all, with MindSpore's CRC.

Two kinds share the format: converted weights (the model's parameters under their own names) and
trainer checkpoints, which add the EMA (``ema.<name>``), the optimizer state, the step counters
and, as appended values, ``format`` = TRAIN_FORMAT, the epoch, the global step, the best top-1 and
the run's resolved config as JSON: a trainer checkpoint says what it is and how it was made.
"""
import json
import os

from ..errors import CheckpointError, CheckpointWriteError
from ..fileio import atomic_output
from .readers import read_any

TRAIN_FORMAT = 'mindcoat-train-v1'
# keys of a trainer checkpoint's stored config -> checkpoint_info's names for them: what an
# inference tool or a resumed run takes from the file
TRAIN_SETTINGS = {'model': 'model', 'model_kwargs': 'model_kwargs', 'image_resize': 'image_size',
                  'crop_pct': 'crop_pct', 'crop_mode': 'crop_mode',
                  'interpolation': 'interpolation', 'mean': 'mean', 'std': 'std',
                  'class_names': 'class_names', 'eval_weights': 'eval_weights'}


def save_ckpt(path, params, append=None):
    """Writes ``params`` (a Cell, or a list of Parameters, stored under their names) and the
    ``append`` values to ``path`` with a CRC. On failure CheckpointWriteError (one line) and
    ``path`` keeps its previous content."""
    import mindspore as ms
    if not isinstance(params, ms.nn.Cell):
        params = [{'name': p.name, 'data': p} for p in params]
    try:
        # MindSpore appends '.ckpt' to a name without it: the temporary keeps the suffix
        with atomic_output(path, suffix='.ckpt') as tmp:
            ms.save_checkpoint(params, tmp, append_dict=append, crc_check=True)
    except (OSError, RuntimeError, ValueError) as e:
        reason = getattr(e, 'strerror', None) or (str(e).strip().splitlines() or
                                                  [type(e).__name__])[0]
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; the previous "
                                   f"{os.path.basename(path)} (if any) is kept") from None


def read_train_config(path, max_gb=None):
    """The resolved config a mindcoat trainer checkpoint stored (a dict), read through the safe
    readers; None for any other weight file. CheckpointError if it is unreadable."""
    tree = read_any(path, max_gb)
    if not isinstance(tree, dict) or str(tree.get('format', '')) != TRAIN_FORMAT:
        return None
    try:
        config = json.loads(str(tree.get('config')))
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: a mindcoat training checkpoint whose stored config is "
                              "not a JSON object; the file is damaged")
    return config
