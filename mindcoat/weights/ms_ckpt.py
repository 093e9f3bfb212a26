"""MindSpore ``.ckpt`` files read without MindSpore: the protobuf wire format parsed here, and
every record checked before an array is built from it.

The layout, as mindspore/train/serialization.py writes it (checkpoint.proto):

- the file is serialized ``Checkpoint`` messages one after another, each holding one ``Value``
  in field 1 (length-delimited);
- ``Value``: 1 ``tag`` (the name, a string), 2 ``tensor`` (a ``TensorProto``) or 3
  ``maptensor`` (a MapParameter, which CoaT never has);
- ``TensorProto``: 1 ``dims`` (repeated int64), 2 ``tensor_type`` (MindSpore's dtype name,
  e.g. 'Float32'), 3 ``tensor_content`` (the raw little-endian bytes);
- a tensor above 512 MB is written as consecutive records of the same name whose contents
  concatenate; ``append_dict`` values are scalar tensors (int -> Int64, float -> Float32,
  bool -> Bool) and strings (tensor_type 'str', dims [0], numpy's UTF-32 bytes);
- written with ``crc_check=True``, the file ends in b'crc_num' and the CRC-32 (zlib's) of every
  byte before it as 10 big-endian bytes.

Nothing is trusted: a record's content must be exactly its dims times its dtype's size, names are
unique, dtypes known, and the wire data must parse to the last byte. Arrays are views of the file
read once into memory (copied only when a record's bytes are not aligned for its dtype).
"""
import math
import zlib

import numpy as np

from ..errors import CheckpointError

_CRC_MARK = b'crc_num'
_CRC_TRAILER = len(_CRC_MARK) + 10
_MAX_NDIM = 32
_MAX_VARINT_BYTES = 10
# MindSpore's tensor_type names -> little-endian numpy dtypes ('BFloat16' is widened to float32)
_DTYPES = {'Float16': '<f2', 'Float32': '<f4', 'Float64': '<f8', 'BFloat16': '<u2',
           'Int8': 'i1', 'UInt8': 'u1', 'Int16': '<i2', 'UInt16': '<u2', 'Int32': '<i4',
           'UInt32': '<u4', 'Int64': '<i8', 'UInt64': '<u8', 'Bool': 'u1'}
_STRING = 'str'
# protobuf wire types; a record starts with the key of field 1, length-delimited
_VARINT, _LENGTH = 0, 2
_RECORD_KEY = 1 << 3 | _LENGTH


class _Malformed(Exception):
    """A problem found while parsing; the reader turns it into a CheckpointError naming the
    file."""


def _has_crc(data):
    return bytes(data[-_CRC_TRAILER:-10]) == _CRC_MARK


def read_ckpt(path, charge):
    """{name: numpy array or str} of the .ckpt at ``path``, in file order. ``charge(nbytes)`` is
    called with the bytes of every array before it is built (the caller's size cap)."""
    data = _read_file(path)
    try:
        body = _verified_body(path, data)
        return _build_all(_merge(_records(body)), charge)
    except _Malformed as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _read_file(path):
    with open(path, 'rb') as f:
        size = f.seek(0, 2)
        f.seek(0)
        data = bytearray(size)
        if f.readinto(data) != size:
            raise CheckpointError(f"{path}: the file changed or was truncated while reading")
    return data


def _verified_body(path, data):
    """The file without its CRC trailer, checked against the CRC when there is one (MindCV's
    files and MindSpore's default saves have none and are read unverified)."""
    view = memoryview(data)
    if not _has_crc(data):
        return view
    body = view[:-_CRC_TRAILER]
    if zlib.crc32(body) != int.from_bytes(data[-10:], 'big'):
        raise CheckpointError(f"{path}: fails its CRC check, the file is damaged or was changed "
                              "after it was written")
    return body


# ------------------------------------------------------------------------------ wire format
def _varint(buf, pos, end):
    """(value, next position) of the varint at ``pos``."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= end:
            raise _Malformed(f"not a readable MindSpore checkpoint (a number runs past the end "
                             f"of its data at byte {pos})")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    raise _Malformed(f"not a readable MindSpore checkpoint (a number longer than "
                     f"{_MAX_VARINT_BYTES} bytes at byte {pos})")


def _int64(value):
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf, start, end, what):
    """(field number, wire type, value, position) of each field in buf[start:end]; a
    length-delimited value is (start, end) of its bytes, bounds-checked."""
    pos = start
    while pos < end:
        key, after = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, after = _varint(buf, after, end)
        elif wire == _LENGTH:
            length, after = _varint(buf, after, end)
            if length > end - after:
                raise _Malformed(f"not a readable MindSpore checkpoint (a field of {length} bytes "
                                 f"at byte {pos} runs past the end of its {what}: truncated or "
                                 "damaged)")
            value, after = (after, after + length), after + length
        else:
            raise _Malformed(f"not a readable MindSpore checkpoint (field {number} of wire type "
                             f"{wire} at byte {pos} in a {what}: not checkpoint data)")
        yield number, wire, value, pos
        pos = after


def _records(buf):
    """(name, dims, tensor_type, content view, position) of each record in the file."""
    for span, pos in _record_spans(buf):
        name, tensor = _value(buf, span[0], span[1], pos)
        dims, dtype, content = _tensor(buf, tensor, name)
        yield name, dims, dtype, content, pos


def _record_spans(buf):
    """((start, end), position) of each record's Value: the file is field 1 of Checkpoint,
    length-delimited (key byte 0x0A), over and over, up to its last byte."""
    pos, end = 0, len(buf)
    while pos < end:
        if buf[pos] != _RECORD_KEY:
            raise _Malformed(f"not a readable MindSpore checkpoint (byte {pos} does not start a "
                             "record: garbage after the records, or not checkpoint data)")
        length, start = _varint(buf, pos + 1, end)
        if length > end - start:
            raise _Malformed(f"not a readable MindSpore checkpoint (the record at byte {pos} "
                             f"claims {length} bytes, {end - start} are left: truncated or "
                             "damaged)")
        yield (start, start + length), pos
        pos = start + length


def _value(buf, start, end, pos):
    """(name, (start, end) of its TensorProto) of the Value message in buf[start:end]."""
    seen = _unique_fields(buf, start, end, 'record', pos, {1: _LENGTH, 2: _LENGTH, 3: _LENGTH})
    if 1 not in seen:
        raise _Malformed(f"the record at byte {pos} has no name; the file is damaged or crafted")
    name = _text(buf, seen[1], f"the name of the record at byte {pos}")
    if not name:
        raise _Malformed(f"the record at byte {pos} has an empty name; the file is damaged or "
                         "crafted")
    if 3 in seen:
        raise _Malformed(f"record '{name}' is a MapParameter, which CoaT weights never are")
    if 2 not in seen:
        raise _Malformed(f"record '{name}' holds no tensor; the file is damaged or crafted")
    return name, seen[2]


def _unique_fields(buf, start, end, what, pos, allowed):
    """{field number: value} of a message whose fields appear at most once each, every one of
    them in ``allowed`` (number -> wire type)."""
    seen = {}
    for number, wire, value, _ in _fields(buf, start, end, what):
        if allowed.get(number) != wire:
            raise _Malformed(f"not a readable MindSpore checkpoint (unknown field {number} in "
                             f"the {what} at byte {pos})")
        if number in seen:
            raise _Malformed(f"not a readable MindSpore checkpoint (field {number} twice in the "
                             f"{what} at byte {pos})")
        seen[number] = value
    return seen


def _tensor(buf, span, name):
    """(dims, tensor_type, content view) of the TensorProto at buf[span[0]:span[1]]."""
    dims, seen = [], {}
    for number, wire, value, _ in _fields(buf, span[0], span[1], f"tensor '{name}'"):
        if number == 1:
            dims.extend(_dims(buf, wire, value, name))
            if len(dims) > _MAX_NDIM:
                raise _Malformed(f"record '{name}' has more than {_MAX_NDIM} dimensions; the file "
                                 "is damaged or crafted")
        elif number in (2, 3) and wire == _LENGTH and number not in seen:
            seen[number] = value
        else:
            raise _Malformed(f"not a readable MindSpore checkpoint (unexpected or repeated field "
                             f"{number} in tensor '{name}')")
    if 2 not in seen or 3 not in seen:
        raise _Malformed(f"record '{name}' lacks its {'tensor_type' if 2 not in seen else 'data'}; "
                         "the file is damaged or crafted")
    dtype = _text(buf, seen[2], f"the data type of '{name}'")
    return tuple(dims), dtype, buf[seen[3][0]:seen[3][1]]


def _dims(buf, wire, value, name):
    """One dim (a varint) or several (packed): as signed int64, as protobuf reads them."""
    if wire == _VARINT:
        return [_int64(value)]
    if wire != _LENGTH:
        raise _Malformed(f"not a readable MindSpore checkpoint (dims of '{name}' of wire type "
                         f"{wire})")
    out, pos = [], value[0]
    while pos < value[1] and len(out) <= _MAX_NDIM:
        dim, pos = _varint(buf, pos, value[1])
        out.append(_int64(dim))
    return out


def _text(buf, span, what):
    try:
        return bytes(buf[span[0]:span[1]]).decode('utf-8')
    except UnicodeDecodeError:
        raise _Malformed(f"{what} is not UTF-8 text; the file is damaged or crafted") from None


# --------------------------------------------------------------------------------- records
def _merge(records):
    """[(name, dims, tensor_type, [content views])]: consecutive records of one name are the
    slices of one tensor (same dims and type); a name seen again later is refused."""
    merged, first_at = [], {}
    for name, dims, dtype, content, pos in records:
        if merged and merged[-1][0] == name:
            if merged[-1][1:3] != (dims, dtype):
                raise _Malformed(f"the slices of '{name}' disagree on its shape or data type "
                                 f"({merged[-1][1]} {merged[-1][2]} vs {dims} {dtype}); the file "
                                 "is damaged or crafted")
            merged[-1][3].append(content)
            continue
        if name in first_at:
            raise _Malformed(f"two records named '{name}' (at bytes {first_at[name]} and {pos}); "
                             "the file is damaged or crafted")
        first_at[name] = pos
        merged.append((name, dims, dtype, [content]))
    return merged


def _build_all(merged, charge):
    return {name: _build(name, dims, dtype, pieces, charge)
            for name, dims, dtype, pieces in merged}


def _build(name, dims, dtype, pieces, charge):
    if dtype == _STRING:
        return _string(name, dims, pieces)
    if dtype not in _DTYPES:
        raise _Malformed(f"record '{name}' has unsupported data type '{dtype[:40]}' (known: "
                         f"{', '.join(_DTYPES)}, str)")
    raw = np.dtype(_DTYPES[dtype])
    nbytes = sum(len(p) for p in pieces)
    shape = _shape(name, dims, dtype, raw.itemsize, nbytes)
    charge(nbytes * (2 if dtype == 'BFloat16' else 1))
    flat = _array(pieces, raw)
    if dtype == 'Bool':
        return _bools(name, flat).reshape(shape)
    if dtype == 'BFloat16':
        return (flat.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return flat.reshape(shape)


def _shape(name, dims, dtype, itemsize, nbytes):
    """The array shape ``dims`` stand for, once they are shown to describe exactly ``nbytes``.
    MindSpore writes a 0-d tensor's dims as [] and reads [0] as 0-d too."""
    if any(d < 0 for d in dims):
        raise _Malformed(f"record '{name}' has a negative dimension in {dims}; the file is "
                         "damaged or crafted")
    shape = () if dims == (0,) and nbytes == itemsize else dims
    expected = itemsize * math.prod(shape)
    if expected != nbytes:
        raise _Malformed(f"record '{name}' declares shape {dims} of {dtype} ({expected} bytes) "
                         f"but holds {nbytes} bytes; the file is damaged or crafted")
    return shape


def _array(pieces, raw):
    """The pieces' bytes as one flat array, a view of the file unless they must be joined or
    realigned."""
    if len(pieces) > 1:
        return np.frombuffer(bytearray().join(pieces), raw)
    flat = np.frombuffer(pieces[0], raw)
    return flat if flat.flags.aligned else flat.copy()


def _bools(name, flat):
    if flat.size and flat.max() > 1:
        raise _Malformed(f"record '{name}' is Bool but holds bytes other than 0 and 1; the file "
                         "is damaged or crafted")
    return flat.view(np.bool_)


def _string(name, dims, pieces):
    """An appended string: numpy's UTF-32 bytes, trailing NULs dropped (as numpy reads them)."""
    content = b''.join(pieces)
    if dims != (0,) or len(content) % 4:
        raise _Malformed(f"record '{name}' is a string with dims {dims} and {len(content)} "
                         "bytes; the file is damaged or crafted")
    try:
        return content.decode('utf-32-le').rstrip('\x00')
    except UnicodeDecodeError:
        raise _Malformed(f"record '{name}' is a string that is not valid UTF-32; the file is "
                         "damaged or crafted") from None
