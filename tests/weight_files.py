"""Test helper: writes weight files in the formats users bring, without torch.

- ``write_torch_zip``: the ``torch.save`` zip layout (archive/data.pkl + archive/data/<key>), its
  pickle emitted opcode by opcode with the same globals torch uses (_rebuild_tensor_v2,
  FloatStorage, OrderedDict), so the converter reads it as it would a real file.
- ``mindcv_style``: MindCV's CoaT naming (LayerNorm gamma/beta, q/k/v split out of qkv).
"""
import io
import struct
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage'}


class _PickleWriter:
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
        self.op(b'J' + struct.pack('<i', n))  # BININT

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
        self.global_('torch._utils', '_rebuild_tensor_v2')
        self.op(b'(')
        self.op(b'(')  # persistent id: ('storage', FloatStorage, key, 'cpu', numel)
        self.string('storage')
        self.global_('torch', _STORAGE[arr.dtype])
        self.string(key)
        self.string('cpu')
        self.integer(arr.size)
        self.op(b't')
        self.op(b'Q')  # BINPERSID
        self.integer(0)  # storage offset
        self.ints_tuple(arr.shape)
        self.ints_tuple([s // arr.itemsize for s in arr.strides])
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
        elif isinstance(v, str):
            self.string(v)
        else:
            raise TypeError(type(v))

    def dump(self, obj):
        self.op(b'\x80\x02')
        self.value(obj)
        self.op(b'.')
        return self.out.getvalue()


def write_torch_zip(path, obj):
    """``obj``: nested dict with numpy arrays as tensors (e.g. {'model': state_dict})."""
    writer = _PickleWriter()
    data = writer.dump(obj)
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', data)
        for key, arr in writer.storages.items():
            z.writestr(f'archive/data/{key}', arr.tobytes())
        z.writestr('archive/version', '3\n')


def state_dict(model):
    """mindcoat names are the reference (timm/official) keys."""
    return {p.name: p.asnumpy().copy() for p in model.get_parameters()}


def mindcv_style(model):
    """{name: array} under MindCV's CoaT names: norms as gamma/beta, q/k/v instead of qkv."""
    out = {}
    norms = {n for n, _ in model.cells_and_names() if n.split('.')[-1].startswith('norm')}
    for name, value in state_dict(model).items():
        owner, _, leaf = name.rpartition('.')
        if owner in norms:
            out[f"{owner}.{'gamma' if leaf == 'weight' else 'beta'}"] = value
        elif owner.endswith('.qkv'):
            base = owner[:-len('qkv')]
            for part, chunk in zip('qkv', np.split(value, 3, axis=0)):
                out[f'{base}{part}.{leaf}'] = chunk
        else:
            out[name] = value
    return out
