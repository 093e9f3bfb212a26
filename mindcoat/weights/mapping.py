"""Maps a state dict from any CoaT implementation onto mindcoat's parameter names.

mindcoat uses the official checkpoint keys, so for the official and timm files this is mostly
bookkeeping: shared modules appear there under several names (each stage's cpe/crpe inside every
block, ``mlp3``/``mlp4`` as aliases of ``mlp2``) and collapse to one. MindCV differs in three
ways: LayerNorm ``gamma``/``beta``, separate ``q``/``k``/``v`` projections (fused here into
``qkv`` in that order), and a Conv1d ``aggregate`` weight of shape (1, 3, 1, 1).
"""
import re

import numpy as np

from ..errors import CheckpointError
from .readers import is_tensor

# alias -> canonical name of a shared module
_ALIASES = [
    (re.compile(r'^serial_blocks(\d)\.\d+\.cpe\.(.*)$'), r'cpe\1.\2'),
    (re.compile(r'^serial_blocks(\d)\.\d+\.factoratt_crpe\.crpe\.(.*)$'), r'crpe\1.\2'),
    (re.compile(r'^parallel_blocks\.\d+\.factoratt_crpe(\d)\.crpe\.(.*)$'), r'crpe\1.\2'),
    (re.compile(r'^parallel_blocks\.(\d+)\.mlp[34]\.(.*)$'), r'parallel_blocks.\1.mlp2.\2'),
]
# MindCV keeps the stages' shared cpes in each parallel block as a list (cpes.0 .. cpes.3)
_MINDCV_CPES = re.compile(r'^parallel_blocks\.\d+\.cpes\.(\d)\.(.*)$')
_SPLIT_QKV = re.compile(r'^(.*factoratt_crpe\d?)\.([qkv])\.(weight|bias)$')
# containers a training script wraps the weights in
_NESTS = ('model', 'state_dict', 'module', 'network')
_EMA_NESTS = ('model_ema', 'state_dict_ema', 'ema')


def select_weights(obj, use_ema=False, source='checkpoint'):
    """Picks the flat name -> tensor dict out of a loaded file (official files nest the weights
    under 'model' and the EMA weights under 'model_ema'; mindcoat prefixes EMA keys 'ema.')."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of weights")
    nests = _EMA_NESTS if use_ema else _NESTS
    for key in nests:
        if isinstance(obj.get(key), dict):
            return select_weights(obj[key], False, source)
    tensors = {k: v for k, v in obj.items() if is_tensor(v)}
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"{source}: weight names must be strings, found {odd[0]!r:.40} "
                              f"({type(odd[0]).__name__}); not a state dict")
    if use_ema:
        ema = {k[4:]: v for k, v in tensors.items() if k.startswith('ema.')}
        if not ema:
            raise CheckpointError(f"{source}: no EMA weights in this file (looked for "
                                  f"{', '.join(_EMA_NESTS)} and 'ema.*' keys); drop --ema")
        return ema
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: "
                              f"{', '.join(map(str, list(obj)[:8]))})")
    return {k[7:] if k.startswith('module.') else k: v for k, v in tensors.items()}


def canonical_name(name):
    name = re.sub(r'\.gamma$', '.weight', name)
    name = re.sub(r'\.beta$', '.bias', name)
    m = _MINDCV_CPES.match(name)
    if m:
        return f'cpe{int(m.group(1)) + 1}.{m.group(2)}'
    for pattern, repl in _ALIASES:
        if pattern.match(name):
            return pattern.sub(repl, name)
    return name


def to_mindcoat(weights):
    """Returns (canonical dict, list of alias keys that disagreed with their canonical copy)."""
    out, conflicts, split_qkv = {}, [], {}
    for name, value in weights.items():
        key = canonical_name(name)
        m = _SPLIT_QKV.match(key)
        if m:
            split_qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key in out:
            if out[key].shape != value.shape or not np.array_equal(out[key], value):
                conflicts.append(name)
            continue
        out[key] = value
    for (prefix, kind), parts in split_qkv.items():
        if set(parts) != {'q', 'k', 'v'}:
            raise CheckpointError(f"{prefix}: found {sorted(parts)} projections, need q, k and v")
        out[f'{prefix}.qkv.{kind}'] = np.concatenate([parts['q'], parts['k'], parts['v']], axis=0)
    return out, conflicts
