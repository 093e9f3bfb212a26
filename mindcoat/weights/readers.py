"""Readers for every CoaT weight file in circulation, none of which runs code from the file.

- PyTorch ``torch.save`` zip archives (the official release and trainer, timm): the pickle inside
  is interpreted by a restricted unpickler that knows the objects torch writes (tensors,
  parameters, OrderedDict with its ``_metadata``, storages, dtypes, torch.Size,
  argparse.Namespace, optimizer / scheduler / scaler state made of plain values) and refuses
  every other global, opcode or object state before anything is called.
- safetensors (timm, MindSpore ``format='safetensors'``): header validated, then read directly.
- MindSpore ``.ckpt`` (mindcoat, MindCV): the protobuf records parsed by ``ms_ckpt`` (not by
  MindSpore, whose loader crashes the process on some crafted records), the CRC checked when the
  file has one.

A reader returns a tree of dicts, lists, tuples, plain values and tensors; a tensor is a numpy
array or a ``LazyTensor`` whose shape and dtype are known and whose data is read only when asked
for (so a training checkpoint's optimizer state is validated but never read). Every problem is a
``CheckpointError`` with a one-line message. The bytes any one file may inflate to or materialise
are capped (``MINDCOAT_MAX_CHECKPOINT_GB``, default 2).
"""
import argparse
import io
import json
import math
import os
import pickle
import struct
import zipfile
from contextlib import contextmanager

import numpy as np

from ..errors import CheckpointError
from .ms_ckpt import read_ckpt

MAX_GB_ENV = 'MINDCOAT_MAX_CHECKPOINT_GB'
DEFAULT_MAX_GB = 2.0  # the largest real CoaT file (coat_lite_medium, model + EMA + AdamW) is 0.7 GB
_MAX_NDIM = 32
_MAX_DEPTH = 64  # nesting of containers in a checkpoint (real ones: 5)
_MAX_HEADER = 100 << 20  # safetensors header bytes
# above any size, stride or offset a real file has; keeps numpy's byte arithmetic inside int64
_MAX_INDEX = 1 << 56


def size_cap(max_gb=None):
    """Bytes a weight file may hold or inflate to: ``max_gb``, else $MINDCOAT_MAX_CHECKPOINT_GB,
    else 2 GB."""
    source = '--max_gb'
    if max_gb is None:
        max_gb, source = os.environ.get(MAX_GB_ENV, DEFAULT_MAX_GB), MAX_GB_ENV
    try:
        value = float(max_gb)
    except (TypeError, ValueError):
        value = float('nan')
    if not value > 0 or math.isinf(value):
        raise CheckpointError(f"{source} must be a positive number of gigabytes, got {max_gb!r}")
    return int(value * (1 << 30))


def _cap_error(path, what, size, cap):
    return CheckpointError(
        f"{path}: {what} {size / (1 << 30):.2f} GB, above the {cap / (1 << 30):g} GB limit for "
        f"weight files; if you trust the file, raise it with --max_gb or {MAX_GB_ENV}")


class _Budget:
    """Bytes of tensor data a file may materialise."""

    def __init__(self, path, cap):
        self.path, self.cap, self.used = path, cap, 0

    def charge(self, nbytes):
        self.used += nbytes
        if self.used > self.cap:
            raise _cap_error(self.path, 'its tensors add up to at least', self.used, self.cap)


class LazyTensor:
    """A validated tensor whose bytes are read by ``numpy()``."""

    __slots__ = ('shape', 'dtype', '_load')

    def __init__(self, shape, dtype, load):
        self.shape, self.dtype, self._load = tuple(shape), np.dtype(dtype), load

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    def numpy(self):
        return self._load()


def is_tensor(value):
    return isinstance(value, (np.ndarray, LazyTensor))


def as_numpy(value):
    return value.numpy() if isinstance(value, LazyTensor) else value


def _bfloat16_to_float32(raw):
    return (np.asarray(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _int_list(value, what):
    """A shape / stride / offsets as a tuple of non-negative Python ints below _MAX_INDEX."""
    if not isinstance(value, (tuple, list)) or len(value) > _MAX_NDIM:
        raise CheckpointError(f"malformed tensor {what}: {value!r:.80}")
    out = []
    for v in value:
        if type(v) is not int or not 0 <= v < _MAX_INDEX:
            raise CheckpointError(f"malformed tensor {what}: {value!r:.80} (needs non-negative "
                                  "integers of a plausible size)")
        out.append(v)
    return tuple(out)


def _shape_list(value, what):
    """A shape numpy can build. Tensors with elements are held to the size cap; an empty one
    whose other dims multiply past any file (numpy refuses to build it) is refused here."""
    shape = _int_list(value, what)
    if 0 in shape and math.prod(d for d in shape if d) >= _MAX_INDEX:
        raise CheckpointError(f"malformed tensor {what}: {value!r:.80} (an empty tensor whose "
                              "other dimensions exceed any file)")
    return shape


# ------------------------------------------------------------------------- torch.save archives
# storage class names torch writes -> numpy dtype ('bfloat16' is widened to float32 when read)
_TORCH_STORAGES = {
    'FloatStorage': 'float32', 'DoubleStorage': 'float64', 'HalfStorage': 'float16',
    'BFloat16Storage': 'bfloat16', 'LongStorage': 'int64', 'IntStorage': 'int32',
    'ShortStorage': 'int16', 'CharStorage': 'int8', 'ByteStorage': 'uint8',
    'BoolStorage': 'bool', 'ComplexFloatStorage': 'complex64',
    'ComplexDoubleStorage': 'complex128', 'UntypedStorage': 'uint8',
}
_TORCH_DTYPES = {
    'float32', 'float', 'float64', 'double', 'float16', 'half', 'bfloat16', 'int64', 'long',
    'int32', 'int', 'int16', 'short', 'int8', 'uint8', 'bool', 'complex64', 'complex128',
    'cfloat', 'cdouble',
}


def _itemsize(dtype):
    return 2 if dtype == 'bfloat16' else np.dtype(dtype).itemsize


def _result_dtype(dtype):
    return np.dtype('float32' if dtype == 'bfloat16' else dtype)


class _Token:
    """An inert value standing for a torch global (a storage class or a dtype). It has no
    ``__dict__`` and the unpickler never lets a file set its state."""

    __slots__ = ('kind', 'name', 'dtype')

    def __init__(self, kind, name, dtype=None):
        self.kind, self.name, self.dtype = kind, name, dtype


class _OrderedDict(dict):
    """collections.OrderedDict as torch's state_dict() writes it: items, then ``_metadata``
    (per-module versions) set through BUILD."""

    __slots__ = ('metadata',)


class _Namespace:
    """argparse.Namespace (the official trainer's args): its attributes, kept as data."""

    __slots__ = ('fields',)

    def __init__(self):
        self.fields = {}


class _ZipEntry:
    """One member of the archive, read at most once, checked against its declared size (the
    central directory's, which the cap was checked against) and its CRC (zipfile verifies it
    when the member is read to the end)."""

    def __init__(self, archive, info, path):
        self.archive, self.info, self.path = archive, info, path
        self._data = None

    @property
    def nbytes(self):
        return self.info.file_size

    def read(self):
        if self._data is None:
            with _zip_errors(self.path):
                with self.archive.open(self.info) as f:
                    data = f.read(self.info.file_size + 1)
            if len(data) != self.info.file_size:
                raise CheckpointError(
                    f"{self.path}: member {self.info.filename} inflates to {len(data)} bytes, its "
                    f"header says {self.info.file_size}; the archive is damaged")
            self._data = data
        return self._data


class _StorageRef:
    __slots__ = ('entry', 'dtype')

    def __init__(self, entry, dtype):
        self.entry, self.dtype = entry, dtype


@contextmanager
def _zip_errors(path):
    try:
        yield
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            RuntimeError, NotImplementedError, struct.error, OverflowError) as exc:
        raise CheckpointError(f"{path}: damaged or truncated zip archive ({exc}); download or "
                              "save it again") from None


class _SafeUnpickler(pickle._Unpickler):
    """Python's reference unpickler with the dangerous parts replaced: globals come only from an
    allow-list of inert stand-ins, REDUCE/NEWOBJ call only those, BUILD sets state only on the
    OrderedDict and Namespace stand-ins, and opcodes torch never writes are refused."""

    def __init__(self, data, archive, prefix, budget, byteorder):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._budget = archive, prefix, budget
        self._byteorder = byteorder
        self._entries = {}
        self._callables = {
            ('torch._utils', '_rebuild_tensor_v2'): self._rebuild_tensor,
            ('torch._utils', '_rebuild_tensor'): self._rebuild_tensor,
            ('torch._utils', '_rebuild_parameter'): self._rebuild_parameter,
            ('torch._utils', '_rebuild_parameter_with_state'): self._rebuild_parameter,
            ('collections', 'OrderedDict'): _OrderedDict,
            ('argparse', 'Namespace'): _Namespace,
            ('torch', 'Size'): self._size,
        }

    def find_class(self, module, name):
        if (module, name) in self._callables:
            return self._callables[(module, name)]
        if module in ('torch', 'torch.storage') and name in _TORCH_STORAGES:
            return _Token('storage', name, _TORCH_STORAGES[name])
        if module == 'torch' and name in _TORCH_DTYPES:
            return _Token('dtype', name)
        raise CheckpointError(
            f"refusing to load '{module}.{name}' from the checkpoint: only tensors and plain "
            "containers are accepted (the file may be malicious or not a weight file)")

    def _is_callable(self, func):
        return any(func is f for f in self._callables.values())

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == 'storage'
                and isinstance(pid[1], _Token) and pid[1].kind == 'storage'
                and isinstance(pid[2], str)):
            raise CheckpointError(f"malformed tensor storage record in the pickle: {pid!r:.80}")
        key = pid[2]
        if key not in self._entries:
            try:
                info = self._archive.getinfo(f'{self._prefix}/data/{key}')
            except KeyError:
                raise CheckpointError(f"tensor data '{key}' is missing from the archive") from None
            self._entries[key] = _ZipEntry(self._archive, info, self._budget.path)
        return _StorageRef(self._entries[key], pid[1].dtype)

    def _rebuild_tensor(self, storage, offset, size, stride, *_):
        if not isinstance(storage, _StorageRef):
            raise CheckpointError("malformed tensor record: its storage is not tensor data")
        if type(offset) is not int or offset < 0:
            raise CheckpointError(f"malformed tensor offset: {offset!r:.40}")
        size, stride = _shape_list(size, 'size'), _int_list(stride, 'stride')
        if len(size) != len(stride):
            raise CheckpointError(f"malformed tensor: size {size} and stride {stride} differ in "
                                  "length")
        itemsize = _itemsize(storage.dtype)
        available = storage.entry.nbytes // itemsize
        numel = math.prod(size)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
        if last >= available:
            raise CheckpointError(
                f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} "
                f"of a storage of {available} elements ({storage.entry.info.filename}): the file "
                "is damaged or crafted")
        self._budget.charge(numel * _result_dtype(storage.dtype).itemsize)
        return LazyTensor(size, _result_dtype(storage.dtype),
                          lambda: self._materialise(storage, offset, size, stride))

    def _materialise(self, storage, offset, size, stride):
        dtype = storage.dtype
        if not math.prod(size):
            return np.zeros(size, _result_dtype(dtype))
        raw_dtype = np.dtype('uint16' if dtype == 'bfloat16' else dtype)
        if self._byteorder == 'big':
            raw_dtype = raw_dtype.newbyteorder('>')
        flat = np.frombuffer(storage.entry.read(), raw_dtype,
                             count=storage.entry.nbytes // raw_dtype.itemsize)
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * raw_dtype.itemsize for s in stride],
            writeable=False)
        out = np.array(view, dtype=raw_dtype.newbyteorder('='))
        return _bfloat16_to_float32(out) if dtype == 'bfloat16' else out

    @staticmethod
    def _rebuild_parameter(data, *_):
        if not isinstance(data, LazyTensor):
            raise CheckpointError("malformed parameter record: it holds no tensor")
        return data

    @staticmethod
    def _size(dims=()):
        return _shape_list(dims, 'size')


def _refuse(what):
    raise CheckpointError(f"refusing {what} in the checkpoint's pickle (torch never writes it; "
                          "the file may be malicious or not a weight file)")


def _load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not self._is_callable(func) or not isinstance(args, tuple):
        _refuse(f"a call of {type(func).__name__}")
    if func is _Namespace and args:
        _refuse("an argparse.Namespace with positional arguments")
    self.stack[-1] = func(*args)


def _load_newobj(self):
    args = self.stack.pop()
    cls = self.stack.pop()
    if cls is not _Namespace or args:
        _refuse(f"creating a {getattr(cls, '__name__', type(cls).__name__)}")
    self.append(_Namespace())


def _load_newobj_ex(self):
    if self.stack.pop():
        _refuse("an object built with keyword arguments")
    _load_newobj(self)


def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(state, tuple) and len(state) == 2 and state[1] is None:
        state = state[0]
    if not isinstance(state, dict) or not all(type(k) is str for k in state):
        _refuse(f"object state of type {type(state).__name__}")
    if type(inst) is _OrderedDict:
        inst.metadata = state.get('_metadata')
    elif type(inst) is _Namespace:
        inst.fields.update(state)
    else:
        _refuse(f"setting the state of a {type(inst).__name__}")


class _Dispatch(dict):
    def __missing__(self, opcode):
        _refuse(f"pickle opcode {bytes([opcode])!r}")


# opcodes that import by other routes or bring outside buffers: never in a torch.save pickle
_BLOCKED = {pickle.INST, pickle.OBJ, pickle.EXT1, pickle.EXT2, pickle.EXT4, pickle.PERSID,
            pickle.NEXT_BUFFER, pickle.READONLY_BUFFER}
_SafeUnpickler.dispatch = _Dispatch(
    {op: fn for op, fn in pickle._Unpickler.dispatch.items() if bytes([op]) not in _BLOCKED})
_SafeUnpickler.dispatch.update({pickle.REDUCE[0]: _load_reduce, pickle.NEWOBJ[0]: _load_newobj,
                                pickle.NEWOBJ_EX[0]: _load_newobj_ex,
                                pickle.BUILD[0]: _load_build})


def _plain(obj, path):
    """The unpickled tree as plain values (dicts, lists, tuples, sets, scalars, strings, None,
    tensors); refuses cycles, nesting deeper than _MAX_DEPTH and leftover stand-ins. Shared
    sub-objects are converted once (a chain of shared lists cannot blow up the walk)."""
    done, active = {}, set()

    def walk(value, depth):
        if isinstance(value, (str, bytes, int, float, complex, bool, type(None), LazyTensor)):
            return value
        key = id(value)
        if key in done:
            return done[key]
        if key in active:
            raise CheckpointError(f"{path}: the checkpoint refers to itself (a cycle in its "
                                  "pickle); it is damaged or crafted")
        if depth > _MAX_DEPTH:
            raise CheckpointError(f"{path}: containers nested deeper than {_MAX_DEPTH} levels; "
                                  "not a weight file")
        active.add(key)
        if isinstance(value, _Namespace):
            out = argparse.Namespace()
            out.__dict__.update({k: walk(v, depth + 1) for k, v in value.fields.items()})
        elif isinstance(value, dict):
            out = {walk(k, depth + 1): walk(v, depth + 1) for k, v in value.items()}
        elif isinstance(value, (list, tuple, set, frozenset)):
            out = type(value)(walk(v, depth + 1) for v in value)
        elif isinstance(value, bytearray):
            out = bytes(value)
        elif isinstance(value, _Token) and value.kind == 'dtype':
            out = f'torch.{value.name}'
        else:
            raise CheckpointError(f"{path}: unexpected {type(value).__name__} in the checkpoint's "
                                  "data; it is damaged or crafted")
        active.discard(key)
        done[key] = out
        return out

    return walk(obj, 0)


def _archive_layout(archive, path, cap):
    """(prefix, byte order) of a torch.save archive, after checking the directory's total
    inflated size against the cap (before anything is inflated)."""
    infos = archive.infolist()
    total = sum(i.file_size for i in infos)
    if total > cap:
        raise _cap_error(path, 'the zip archive inflates to', total, cap)
    pickles = [i.filename for i in infos if i.filename.endswith('/data.pkl')]
    if len(pickles) != 1:
        raise CheckpointError(f"{path}: a zip file but not a torch.save archive "
                              "(no single */data.pkl inside)")
    prefix = pickles[0][:-len('/data.pkl')]
    names = {i.filename for i in infos}
    byteorder = 'little'
    if f'{prefix}/byteorder' in names:
        byteorder = _ZipEntry(archive, archive.getinfo(f'{prefix}/byteorder'), path) \
            .read().decode('ascii', 'replace').strip()
        if byteorder not in ('little', 'big'):
            raise CheckpointError(f"{path}: unknown byte order '{byteorder:.20}' in the archive")
    return prefix, byteorder


def read_torch_zip(path, cap=None):
    cap = size_cap() if cap is None else cap
    with _zip_errors(path):
        archive = zipfile.ZipFile(path)
    prefix, byteorder = _archive_layout(archive, path, cap)
    data = _ZipEntry(archive, archive.getinfo(f'{prefix}/data.pkl'), path).read()
    unpickler = _SafeUnpickler(data, archive, prefix, _Budget(path, cap), byteorder)
    try:
        tree = unpickler.load()
    except CheckpointError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(str(path)) else
                              f"{path}: {message}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, struct.error, OverflowError, UnicodeDecodeError, MemoryError) as exc:
        raise CheckpointError(f"{path}: unreadable torch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:120]})") from None
    return _plain(tree, path)


# ------------------------------------------------------------------------------- safetensors
_SAFETENSORS_DTYPES = {'F32': 'float32', 'F64': 'float64', 'F16': 'float16', 'BF16': 'bfloat16',
                       'I64': 'int64', 'I32': 'int32', 'I16': 'int16', 'I8': 'int8',
                       'U8': 'uint8', 'BOOL': 'bool'}


def _safetensors_header(path, size):
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (length,) = struct.unpack('<Q', head)
        if length > min(size - 8, _MAX_HEADER):
            raise CheckpointError(f"{path}: safetensors header length {length} does not fit the "
                                  f"file ({size} bytes); the file is truncated or damaged")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({type(exc).__name__})") \
            from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a {type(header).__name__}, "
                              "not a table of tensors")
    return header, 8 + length


def _safetensors_entry(path, name, info, data_len):
    """(dtype, shape, begin, end) of one header entry, validated."""
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: safetensors entry '{name}' is "
                              f"{json.dumps(info)[:40]}, not a tensor record")
    dtype = _SAFETENSORS_DTYPES.get(info.get('dtype')) if isinstance(info.get('dtype'), str) \
        else None
    if dtype is None:
        raise CheckpointError(f"{path}: safetensors entry '{name}' has unsupported or missing "
                              f"dtype {json.dumps(info.get('dtype'))[:40]}")
    try:
        shape = _shape_list(info.get('shape'), 'shape')
        begin, end = _int_list(info.get('data_offsets'), 'data_offsets')
    except (CheckpointError, ValueError):
        raise CheckpointError(f"{path}: safetensors entry '{name}' has a malformed shape or "
                              f"data_offsets (shape {json.dumps(info.get('shape'))[:60]}, "
                              f"data_offsets {json.dumps(info.get('data_offsets'))[:60]}; "
                              "sizes and offsets must be non-negative integers of a plausible "
                              "size)") from None
    if not begin <= end <= data_len or end - begin != math.prod(shape) * _itemsize(dtype):
        raise CheckpointError(f"{path}: safetensors entry '{name}' (shape {shape}, {dtype}) "
                              f"has data_offsets [{begin}, {end}] that do not fit its size or "
                              f"the file's {data_len} data bytes")
    return dtype, shape, begin, end


def _file_slice_loader(path, start, count, dtype, shape):
    def load():
        raw_dtype = 'uint16' if dtype == 'bfloat16' else dtype
        with open(path, 'rb') as f:
            out = np.fromfile(f, raw_dtype, count=count, offset=start)
        if out.size != count:
            raise CheckpointError(f"{path}: the file changed or was truncated while reading")
        out = _bfloat16_to_float32(out) if dtype == 'bfloat16' else out
        return out.reshape(shape)
    return load


def read_safetensors(path, cap=None):
    cap = size_cap() if cap is None else cap
    size = os.path.getsize(path)
    header, base = _safetensors_header(path, size)
    budget = _Budget(path, cap)
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        dtype, shape, begin, end = _safetensors_entry(path, name, info, size - base)
        budget.charge(math.prod(shape) * _result_dtype(dtype).itemsize)
        out[name] = LazyTensor(shape, _result_dtype(dtype), _file_slice_loader(
            path, base + begin, math.prod(shape), dtype, shape))
    return out


# --------------------------------------------------------------------------- MindSpore .ckpt
def read_mindspore_ckpt(path, numpy=True, cap=None):
    """A MindSpore .ckpt as {name: numpy array, or str for appended strings}, every record
    checked before it is built (see ms_ckpt). A file written with a CRC (mindcoat's) is refused
    if any byte changed; files without one (MindCV's) are read unverified. ``numpy=False``
    gives MindSpore Parameters in place of the arrays (bfloat16 comes back as float32)."""
    _require_regular_file(path)
    cap = size_cap() if cap is None else cap
    if os.path.getsize(path) > cap:
        raise _cap_error(path, 'the file is', os.path.getsize(path), cap)
    values = read_ckpt(path, _Budget(path, cap).charge)
    return values if numpy else _as_parameters(values)


def _as_parameters(values):
    import mindspore as ms
    return {k: ms.Parameter(ms.Tensor(v), name=k) if isinstance(v, np.ndarray) else v
            for k, v in values.items()}


# ---------------------------------------------------------------------------------- dispatch
def _looks_like_safetensors(head):
    if len(head) < 9:
        return False
    (n,) = struct.unpack('<Q', head[:8])
    return 0 < n < _MAX_HEADER and head[8:9] in (b'{', b'[', b' ')


def read_any(path, max_gb=None):
    """Reads a weight file of any supported format into a tree of plain values and tensors."""
    path = str(path)
    try:
        return _read_any(path, max_gb)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, OSError,
            MemoryError, RecursionError) as exc:  # a malformation no specific check names
        raise CheckpointError(f"{path}: unreadable weight file ({type(exc).__name__}: "
                              f"{str(exc)[:120]})") from None


def _require_regular_file(path):
    """Nothing but a regular file is opened: open() on a FIFO blocks until a writer appears."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a regular file (a directory, FIFO or device); give "
                              "the checkpoint file itself")


def _read_any(path, max_gb):
    _require_regular_file(path)
    cap = size_cap(max_gb)
    with open(path, 'rb') as f:
        head = f.read(16)
    if not head:
        raise CheckpointError(f"{path}: the file is empty")
    if head.startswith(b'PK\x03\x04'):
        return read_torch_zip(path, cap)
    if _looks_like_safetensors(head):
        return read_safetensors(path, cap)
    if head[:1] == b'\x80':
        raise CheckpointError(f"{path}: legacy (pre-1.6) torch serialization is not supported; "
                              "re-save it with torch>=1.6 (torch.save(obj, path))")
    return read_mindspore_ckpt(path, cap=cap)
