"""Writes hostile weight files from a real MindSpore checkpoint: each is the real file with one
thing edited at the protobuf level (field by field), and its CRC recomputed, so the file still
passes MindSpore's own CRC check. tests/test_hostile_ckpt.py imports this to build its cases.

    python tools/make_hostile_ckpts.py BASE.ckpt OUT_DIR

BASE.ckpt is any ``mindspore.save_checkpoint`` output (mindcoat's convert writes one). The cases
(``CASES``) and what each edits:

- content_tripled: a weight record whose content is three copies of its data;
- float32_as_float16: a Float32 record relabelled Float16 (its bytes twice what the dims say);
- duplicate_name: a second record under an earlier record's name, after other records;
- negative_dims: a weight's first dim negated;
- truncated_header: the file ends inside a record's header (tag and dims, before its data);
- short_record: a record holding half of the bytes its dims say;
- unknown_dtype: a record typed 'Float8';
- absurd_dims_overflow / absurd_dims_1e12: dims whose product overflows int64 / is 1e12;
- garbage_after_records: bytes after the last record that are not a record;
- nan_weights / inf_weights: a real ``save_checkpoint`` of the same weights with NaN / Inf in one;
- safetensors_huge_offsets / safetensors_huge_empty_shape: the same weights as safetensors, one
  entry's data_offsets near 1e19 / its shape (1e19, 0).

The protobuf encoder and decoder here are written for this tool, independent of mindcoat's
reader, so the reader is not checked against itself. The layout (checkpoint.proto of
mindspore/train): the file is ``Checkpoint`` messages back to back, each one ``Value`` in field
1 (1 tag, 2 TensorProto); TensorProto: 1 dims (repeated int64, one varint each), 2 tensor_type,
3 tensor_content. With a CRC the file ends in b'crc_num' + the CRC-32 of the rest, 10 bytes
big-endian.
"""
import json
import os
import struct
import sys
import zlib

import numpy as np

CRC_MARK = b'crc_num'
MS_DTYPES = {'Float32': np.float32, 'Float16': np.float16, 'Float64': np.float64,
             'Int32': np.int32, 'Int64': np.int64, 'Bool': np.bool_}


# ------------------------------------------------------------------------------- encoding
def varint(value):
    """The protobuf varint of ``value``; a negative int64 is its 64-bit two's complement."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def length_field(number, payload):
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def tensor_proto(dims, dtype, content):
    out = b''.join(varint(1 << 3) + varint(d) for d in dims)
    return out + length_field(2, dtype.encode()) + length_field(3, content)


def record(name, dims, dtype, content):
    """One serialized Checkpoint message holding one Value, as MindSpore writes it."""
    value = length_field(1, name.encode()) + length_field(2, tensor_proto(dims, dtype, content))
    return length_field(1, value)


def with_crc(body):
    return body + CRC_MARK + zlib.crc32(body).to_bytes(10, 'big')


# ------------------------------------------------------------------------------- decoding
def read_varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def fields(buf):
    """(number, value) of each field of a well-formed message: a varint or the bytes."""
    pos, out = 0, []
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        if key & 7 == 0:
            value, pos = read_varint(buf, pos)
        else:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        out.append((key >> 3, value))
    return out


def signed(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def records(data):
    """[(name, dims, tensor_type, content)] of a real checkpoint (its CRC trailer dropped)."""
    body = data[:-17] if data[-17:-10] == CRC_MARK else data
    out = []
    for _, value in fields(body):
        parts = dict(fields(value))
        tensor = fields(parts[2])
        dims = [signed(v) for n, v in tensor if n == 1]
        meta = {n: v for n, v in tensor if n != 1}
        out.append((parts[1].decode(), dims, meta[2].decode(), bytes(meta[3])))
    return out


def weights(recs):
    """{name: array} of the tensor records MS_DTYPES covers."""
    return {name: np.frombuffer(content, MS_DTYPES[dtype]).reshape(dims)
            for name, dims, dtype, content in recs if dtype in MS_DTYPES}


# ---------------------------------------------------------------------------------- cases
def target(recs):
    """Index of the record the cases edit: the Float32 weight of two or more dims nearest the
    middle of the file (records follow it, so a cut there leaves a real tail to lose)."""
    candidates = [i for i, (_, dims, dtype, _) in enumerate(recs)
                  if dtype == 'Float32' and len(dims) >= 2]
    return min(candidates, key=lambda i: abs(i - len(recs) // 2))


def edited(recs, **change):
    """The file with the target record's name / dims / tensor_type / content replaced."""
    i = target(recs)
    name, dims, dtype, content = recs[i]
    new = (change.get('name', name), change.get('dims', dims), change.get('dtype', dtype),
           change.get('content', content))
    return with_crc(b''.join(record(*r) for r in recs[:i] + [new] + recs[i + 1:]))


def content_tripled(recs):
    return edited(recs, content=recs[target(recs)][3] * 3)


def float32_as_float16(recs):
    return edited(recs, dtype='Float16')


def duplicate_name(recs):
    i = target(recs)
    body = b''.join(record(*r) for r in recs)
    return with_crc(body + record(*recs[i]))  # after the others: not a slice of the first


def negative_dims(recs):
    dims = list(recs[target(recs)][1])
    return edited(recs, dims=[-dims[0]] + dims[1:])


def truncated_header(recs):
    i = target(recs)
    whole = record(*recs[i])
    data_start = whole.index(recs[i][3]) if recs[i][3] else len(whole)
    body = b''.join(record(*r) for r in recs[:i]) + whole[:data_start // 2]
    return with_crc(body)


def short_record(recs):
    content = recs[target(recs)][3]
    return edited(recs, content=content[:len(content) // 2])


def unknown_dtype(recs):
    return edited(recs, dtype='Float8')


def absurd_dims_overflow(recs):
    return edited(recs, dims=[10 ** 6] * 4)  # 1e24 elements: past int64


def absurd_dims_1e12(recs):
    return edited(recs, dims=[10 ** 6, 10 ** 6])


def garbage_after_records(recs):
    body = b''.join(record(*r) for r in recs)
    return with_crc(body + bytes(range(255, 127, -1)))


def _nonfinite(recs, path, value):
    import mindspore as ms
    arrays = weights(recs)
    name = recs[target(recs)][0]
    arrays[name] = arrays[name].copy()
    arrays[name].flat[len(arrays[name].flat) // 2] = value
    ms.save_checkpoint([{'name': k, 'data': ms.Tensor(v)} for k, v in arrays.items()],
                       path, crc_check=True)


def nan_weights(recs, path):
    _nonfinite(recs, path, np.nan)


def inf_weights(recs, path):
    _nonfinite(recs, path, -np.inf)


_SAFETENSORS_DTYPES = {'Float32': 'F32', 'Float16': 'F16', 'Float64': 'F64', 'Int32': 'I32',
                       'Int64': 'I64', 'Bool': 'BOOL'}


def safetensors_bytes(recs, edit):
    """The tensor records as a safetensors file; ``edit(header)`` changes the header first."""
    header, blobs, offset = {}, [], 0
    for name, dims, dtype, content in recs:
        if dtype not in _SAFETENSORS_DTYPES:
            continue
        header[name] = {'dtype': _SAFETENSORS_DTYPES[dtype], 'shape': dims,
                        'data_offsets': [offset, offset + len(content)]}
        blobs.append(content)
        offset += len(content)
    edit(header, recs[target(recs)][0])
    text = json.dumps(header).encode()
    return struct.pack('<Q', len(text)) + text + b''.join(blobs)


def safetensors_huge_offsets(recs):
    def edit(header, name):
        begin, end = header[name]['data_offsets']
        header[name]['data_offsets'] = [10 ** 19 + begin, 10 ** 19 + end]
    return safetensors_bytes(recs, edit)


def safetensors_huge_empty_shape(recs):
    def edit(header, name):
        begin = header[name]['data_offsets'][0]
        header[name].update(shape=[10 ** 19, 0], data_offsets=[begin, begin])
    return safetensors_bytes(recs, edit)


# name -> (file suffix, function of the records returning bytes, or writing ``path`` itself)
CASES = {
    'content_tripled': ('.ckpt', content_tripled),
    'float32_as_float16': ('.ckpt', float32_as_float16),
    'duplicate_name': ('.ckpt', duplicate_name),
    'negative_dims': ('.ckpt', negative_dims),
    'truncated_header': ('.ckpt', truncated_header),
    'short_record': ('.ckpt', short_record),
    'unknown_dtype': ('.ckpt', unknown_dtype),
    'absurd_dims_overflow': ('.ckpt', absurd_dims_overflow),
    'absurd_dims_1e12': ('.ckpt', absurd_dims_1e12),
    'garbage_after_records': ('.ckpt', garbage_after_records),
    'nan_weights': ('.ckpt', nan_weights),
    'inf_weights': ('.ckpt', inf_weights),
    'safetensors_huge_offsets': ('.safetensors', safetensors_huge_offsets),
    'safetensors_huge_empty_shape': ('.safetensors', safetensors_huge_empty_shape),
}
WRITES_ITSELF = {'nan_weights', 'inf_weights'}


def make(case, base, out_dir):
    """Writes ``case`` made from the checkpoint ``base`` into ``out_dir``; returns its path."""
    suffix, build = CASES[case]
    with open(base, 'rb') as f:
        recs = records(f.read())
    path = os.path.join(out_dir, case + suffix)
    if case in WRITES_ITSELF:
        build(recs, path)
    else:
        with open(path, 'wb') as f:
            f.write(build(recs))
    return path


def make_all(base, out_dir):
    """{case: path} of every case, written into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    return {case: make(case, base, out_dir) for case in CASES}


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__.split('\n\n')[1])
    for case, path in make_all(sys.argv[1], sys.argv[2]).items():
        print(f'{case}: {path}')
