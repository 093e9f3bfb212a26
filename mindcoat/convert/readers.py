"""Readers for every CoaT weight file in circulation, none of which runs code from the file.

- PyTorch ``torch.save`` zip archives (the official release, timm): the pickle inside is read by a
  restricted unpickler that rebuilds tensors as numpy arrays and refuses every other global.
- safetensors (timm, and MindSpore's ``format='safetensors'``): parsed directly (header + bytes).
- MindSpore ``.ckpt`` (mindcoat, MindCV): protobuf, read by ``mindspore.load_checkpoint``.
Each returns a (possibly nested) dict whose leaves are numpy arrays.
"""
import json
import os
import pickle
import struct
import zipfile

import numpy as np


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message says what is wrong and what to do."""


# torch storage classes -> numpy dtypes (bfloat16 is widened to float32 when rebuilt)
_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _InertRecord:
    """Stands in for harmless metadata objects (argparse.Namespace in training checkpoints):
    keeps the pickled state as data, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


def _bfloat16_to_float32(raw):
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


class _Storage:
    def __init__(self, data, dtype):
        self.array = _bfloat16_to_float32(data) if dtype == 'bfloat16' else np.frombuffer(data, dtype)


def _rebuild_tensor(storage, offset, size, stride, *_):
    flat = storage.array
    if not size:
        return flat[offset:offset + 1].reshape(()).copy()
    strides = [s * flat.itemsize for s in stride]
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size), strides=strides)
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a tensor checkpoint needs; anything else is refused before it
    can be called."""

    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages = {}

    def find_class(self, module, name):
        if module == 'collections' and name == 'OrderedDict':
            return dict
        if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
            return _rebuild_tensor
        if module == 'torch._utils' and name == '_rebuild_parameter':
            return _rebuild_parameter
        if module == 'torch' and name in _TORCH_STORAGES:
            return _StorageType(_TORCH_STORAGES[name])
        if module == 'argparse' and name == 'Namespace':
            return _InertRecord
        raise CheckpointError(
            f"refusing to load '{module}.{name}' from the checkpoint: only tensors and plain "
            "containers are accepted (the file may be malicious or not a weight file)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
            raise CheckpointError(f"unsupported persistent id in checkpoint: {pid!r:.80}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("malformed tensor storage record in checkpoint")
        if key not in self._storages:
            raw = self._archive.read(f'{self._prefix}/data/{key}')
            self._storages[key] = _Storage(raw, storage_type.dtype)
        return self._storages[key]


def read_torch_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith('/data.pkl')]
        if len(pickles) != 1:
            raise CheckpointError(f"{path}: a zip file but not a torch.save archive "
                                  "(no single */data.pkl inside)")
        prefix = pickles[0][:-len('/data.pkl')]
        with archive.open(pickles[0]) as f:
            try:
                return _RestrictedUnpickler(f, archive, prefix).load()
            except CheckpointError:
                raise
            except Exception as exc:  # truncated/corrupt pickle
                raise CheckpointError(f"{path}: unreadable torch checkpoint ({exc})") from None


_SAFETENSORS_DTYPES = {'F32': np.float32, 'F64': np.float64, 'F16': np.float16, 'BF16': 'bfloat16',
                       'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8,
                       'U8': np.uint8, 'BOOL': np.bool_}


def read_safetensors(path):
    with open(path, 'rb') as f:
        blob = f.read()
    (header_len,) = struct.unpack('<Q', blob[:8])
    try:
        header = json.loads(blob[8:8 + header_len])
    except ValueError:
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        dtype = _SAFETENSORS_DTYPES.get(info['dtype'])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        begin, end = info['data_offsets']
        raw = blob[base + begin:base + end]
        arr = _bfloat16_to_float32(raw) if dtype == 'bfloat16' else np.frombuffer(raw, dtype)
        out[name] = arr.reshape(info['shape']).copy()
    return out


def read_mindspore_ckpt(path):
    import mindspore as ms
    try:
        params = ms.load_checkpoint(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint "
                              f"({str(exc).splitlines()[0]})") from None
    return {k: (v.asnumpy() if hasattr(v, 'asnumpy') else v) for k, v in params.items()}


def _looks_like_safetensors(head):
    if len(head) < 10:
        return False
    (n,) = struct.unpack('<Q', head[:8])
    return 0 < n < 100_000_000 and head[8:9] == b'{'


def read_any(path):
    """Reads a weight file of any supported format into a nested dict of numpy arrays."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, 'rb') as f:
        head = f.read(16)
    if head.startswith(b'PK\x03\x04'):
        return read_torch_zip(path)
    if _looks_like_safetensors(head):
        return read_safetensors(path)
    if head[:1] == b'\x80':
        raise CheckpointError(f"{path}: legacy (pre-1.6) torch serialization is not supported; "
                              "re-save it with torch>=1.6 (torch.save(obj, path))")
    return read_mindspore_ckpt(path)
