"""Test helper: writes weight files in the formats users bring, without torch.

- ``write_torch_zip``: the ``torch.save`` zip layout (archive/data.pkl + archive/data/<key>), its
  pickle emitted opcode by opcode with the same globals torch uses (_rebuild_tensor_v2,
  FloatStorage, OrderedDict), so the converter reads it as it would a real file.
- ``mindcv_style``: MindCV's CoaT naming (LayerNorm gamma/beta, q/k/v split out of qkv).
"""
import io
import re
import struct
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage',
            np.dtype(np.complex64): 'ComplexFloatStorage'}


class PickleWriter:
    """Just enough of pickle protocol 2 for nested dicts of str -> (dict | ndarray | int)."""

    def __init__(self):
        self.out = io.BytesIO()
        self.storages = {}

    def op(self, data):
        self.out.write(data)

    def string(self, s):
        raw = s.encode()
        self.op(b'X' + struct.pack('<I', len(raw)) + raw)  # BINUNICODE

    def integer(self, n):
        if -2**31 <= n < 2**31:
            self.op(b'J' + struct.pack('<i', n))  # BININT
        else:
            raw = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
            self.op(b'\x8a' + bytes([len(raw)]) + raw)  # LONG1

    def ints_tuple(self, values):
        self.op(b'(')
        for v in values:
            self.integer(int(v))
        self.op(b't')

    def global_(self, module, name):
        self.op(b'c' + module.encode() + b'\n' + name.encode() + b'\n')

    def tensor(self, arr):
        arr = np.ascontiguousarray(arr)
        key = str(len(self.storages))
        self.storages[key] = arr
        self.tensor_record(_STORAGE[arr.dtype], key, arr.size, 0, arr.shape,
                           [s // arr.itemsize for s in arr.strides])

    def tensor_record(self, storage_class, key, numel, offset, size, stride):
        """A _rebuild_tensor_v2 call as torch writes it, with any view parameters (crafted files
        pass views that do not fit their storage)."""
        self.global_('torch._utils', '_rebuild_tensor_v2')
        self.op(b'(')
        self.op(b'(')  # persistent id: ('storage', FloatStorage, key, 'cpu', numel)
        self.string('storage')
        self.global_('torch', storage_class)
        self.string(key)
        self.string('cpu')
        self.integer(numel)
        self.op(b't')
        self.op(b'Q')  # BINPERSID
        self.integer(offset)
        self.ints_tuple(size)
        self.ints_tuple(stride)
        self.op(b'\x89')  # requires_grad False
        self.global_('collections', 'OrderedDict')
        self.op(b')R')  # backward hooks: OrderedDict()
        self.op(b't')
        self.op(b'R')

    def value(self, v):
        if isinstance(v, dict):
            self.op(b'}(')
            for k, item in v.items():
                self.string(k)
                self.value(item)
            self.op(b'u')
        elif isinstance(v, np.ndarray):
            self.tensor(v)
        elif isinstance(v, (int, np.integer)):
            self.integer(int(v))
        elif isinstance(v, float):
            self.op(b'G' + struct.pack('>d', v))  # BINFLOAT
        elif isinstance(v, str):
            self.string(v)
        elif isinstance(v, Namespace):  # the official training args: argparse.Namespace(**kw)
            self.global_('argparse', 'Namespace')
            self.op(b')\x81')  # NEWOBJ with no arguments
            self.value(dict(v.kwargs))
            self.op(b'b')  # BUILD: state -> __dict__
        else:
            raise TypeError(type(v))

    def dump(self, obj):
        self.op(b'\x80\x02')
        self.value(obj)
        self.op(b'.')
        return self.out.getvalue()


class Namespace:
    """Stands for an argparse.Namespace inside a checkpoint written by ``write_torch_zip``."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def write_torch_zip(path, obj, data=None, storages=None):
    """``obj``: nested dict with numpy arrays as tensors (e.g. {'model': state_dict}). ``data``:
    raw pickle bytes to store instead (for crafted files), with ``storages`` {key: bytes}."""
    writer = PickleWriter()
    data = writer.dump(obj) if data is None else data
    blobs = {k: a.tobytes() for k, a in writer.storages.items()}
    blobs.update(storages or {})
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', data)
        for key, raw in blobs.items():
            z.writestr(f'archive/data/{key}', raw)
        z.writestr('archive/version', '3\n')


def state_dict(model):
    """mindcoat names are the reference (timm/official) keys."""
    return {p.name: p.asnumpy().copy() for p in model.get_parameters()}


def _stage_depths(names):
    """{stage: serial depth} and the number of parallel blocks, read off the parameter names."""
    depths, parallel = {}, set()
    for name in names:
        m = re.match(r'serial_blocks(\d)\.(\d+)\.', name)
        if m:
            depths[int(m.group(1))] = max(depths.get(int(m.group(1)), 0), int(m.group(2)) + 1)
        m = re.match(r'parallel_blocks\.(\d+)\.', name)
        if m:
            parallel.add(int(m.group(1)))
    return depths, len(parallel)


def official_style(model):
    """The official release's state dict: every shared module under each of its paths (a stage's
    cpe and crpe inside every block, mlp3/mlp4 beside mlp2) plus the final norms the reference
    defines but never uses (norm1; norm2/norm3 in CoaT-Lite), as torch's state_dict() writes it."""
    sd = state_dict(model)
    depths, parallel = _stage_depths(sd)
    out = dict(sd)
    for key, value in sd.items():
        m = re.match(r'(cpe|crpe)(\d)\.(.*)', key)
        if not m:
            continue
        kind, stage, rest = m.groups()
        inner = 'cpe' if kind == 'cpe' else 'factoratt_crpe.crpe'
        for j in range(depths[int(stage)]):
            out[f'serial_blocks{stage}.{j}.{inner}.{rest}'] = value
        if kind == 'crpe' and stage != '1':
            for j in range(parallel):
                out[f'parallel_blocks.{j}.factoratt_crpe{stage}.crpe.{rest}'] = value
    for key, value in sd.items():
        if re.match(r'parallel_blocks\.\d+\.mlp2\.', key):
            out[key.replace('.mlp2.', '.mlp3.')] = value
            out[key.replace('.mlp2.', '.mlp4.')] = value
    dims = [sd[f'cls_token{i}'].shape[-1] for i in range(1, 5)]
    for i in ((1,) if parallel else (1, 2, 3)):
        out[f'norm{i}.weight'] = np.ones(dims[i - 1], np.float32)
        out[f'norm{i}.bias'] = np.zeros(dims[i - 1], np.float32)
    return out


def mindcv_style(model):
    """{name: array} as MindCV 0.3.0's CoaT checkpoints store them: LayerNorm gamma/beta, q/k/v
    instead of qkv, a Conv1d aggregate of shape (1, 3, 1, 1), and each shared cpe/crpe once, under
    its first user in MindCV (a stage's first serial block; for CoaT's stages 2-4 crpe, the first
    parallel block). tests/test_convert.py checks these names against MindCV's own."""
    sd = state_dict(model)
    _, parallel = _stage_depths(sd)
    out = {}
    for name, value in sd.items():
        m = re.match(r'(cpe|crpe)(\d)\.(.*)', name)
        if m:
            kind, stage, rest = m.groups()
            if kind == 'cpe':
                name = f'serial_blocks{stage}.0.cpe.{rest}'
            elif parallel and stage != '1':
                name = f'parallel_blocks.0.factoratt_crpe{stage}.crpe.{rest}'
            else:
                name = f'serial_blocks{stage}.0.factoratt_crpe.crpe.{rest}'
        owner, _, leaf = name.rpartition('.')
        if re.search(r'(^|\.)norm\d*$', owner):
            out[f"{owner}.{'gamma' if leaf == 'weight' else 'beta'}"] = value
        elif owner.endswith('.qkv'):
            base = owner[:-len('qkv')]
            for part, chunk in zip('qkv', np.split(value, 3, axis=0)):
                out[f'{base}{part}.{leaf}'] = chunk
        elif name == 'aggregate.weight':
            out[name] = value.reshape(1, 3, 1, 1)
        else:
            out[name] = value
    return out
