"""Hostile and damaged weight files, each crafted here: every one is refused with a one-line
CheckpointError before any parameter is assigned, nothing in it runs, and nothing is read out of
bounds. Also the all-or-nothing rules of load_weights (dtypes, another variant, unexpected and
missing keys, a file matching a few parameters) and the command line's exit code and single
stderr line."""
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest
from safetensors.numpy import save_file

from mindcoat import create_model
from mindcoat.errors import CheckpointError
from mindcoat.weights import load_weights, read_weights
from mindcoat.weights.readers import read_any
from weight_files import PickleWriter, write_torch_zip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'weights')
REAL_PTH = os.path.join(FIXTURES, 'official_lite_state_dict.pth')
LITE = dict(embed_dims=(8, 16, 16, 24), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 1, 1))


def quiet(*_):
    pass


@pytest.fixture(scope='module')
def real_weights():
    """The official file's weights, mindcoat names (what a valid file holds)."""
    return read_weights(REAL_PTH)[0]


def tiny_model():
    return create_model('coat_lite_tiny', num_classes=10, **LITE)


def snapshot(model):
    return {p.name: p.asnumpy().copy() for p in model.get_parameters()}


def refused(path, match, model=None, **kwargs):
    """load_weights refuses ``path`` in one line matching ``match`` and leaves the model as it
    was; returns the message."""
    model = model or tiny_model()
    before = snapshot(model)
    with pytest.raises(CheckpointError, match=match) as info:
        load_weights(model, str(path), log=quiet, **kwargs)
    message = str(info.value)
    assert '\n' not in message and 'Traceback' not in message
    after = snapshot(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), 'model half-loaded'
    return message


def crafted(path, build, storages=None):
    """A torch.save zip whose pickle ``build(writer)`` writes opcode by opcode."""
    writer = PickleWriter()
    writer.op(b'\x80\x02')
    build(writer)
    writer.op(b'.')
    write_torch_zip(path, None, data=writer.out.getvalue(), storages=storages)
    return path


def one_tensor(storage_class='FloatStorage', numel=4, offset=0, size=(4,), stride=(1,),
               key='head.weight'):
    def build(w):
        w.op(b'}(')
        w.string('model')
        w.op(b'}(')
        w.string(key)
        w.tensor_record(storage_class, '0', numel, offset, size, stride)
        w.op(b'uu')
    return build


# ----------------------------------------------------------------------- tensor views
@pytest.mark.parametrize('view', [
    dict(size=(2, 3), stride=(10**12, 1)),   # huge stride: used to segfault
    dict(size=(1000,), stride=(1,)),         # longer than its storage: used to leak heap bytes
    dict(size=(4,), stride=(1,), offset=3),  # offset pushes the end out
    dict(size=(2**40, 2**40), stride=(0, 0)),  # inside the buffer but 10^24 elements
])
def test_tensor_view_outside_its_storage_is_refused(view, tmp_path):
    path = crafted(tmp_path / 'view.pth', one_tensor(**view),
                   storages={'0': np.ones(4, np.float32).tobytes()})
    message = refused(path, r'reaches element|above the .* GB limit')
    assert 'damaged or crafted' in message or '--max_gb' in message


@pytest.mark.parametrize('bad', [dict(stride=(-1,)), dict(offset=-2), dict(size=(-4,))])
def test_negative_offset_size_or_stride_is_refused(bad, tmp_path):
    view = dict(size=(4,), stride=(1,), offset=0)
    view.update(bad)
    path = crafted(tmp_path / 'neg.pth', one_tensor(**view),
                   storages={'0': np.ones(4, np.float32).tobytes()})
    refused(path, r'malformed tensor|non-negative')


def test_tensor_data_missing_from_the_archive(tmp_path):
    refused(crafted(tmp_path / 'nodata.pth', one_tensor()), "tensor data '0' is missing")


# ------------------------------------------------------------------------- size cap, zip
def _zip_of_zeros(path, nbytes):
    """A torch.save-shaped zip whose one storage is ``nbytes`` of zeros, deflated (tiny)."""
    writer = PickleWriter()
    data = writer.dump({})  # the pickle is never reached
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr('archive/data.pkl', data)
        with z.open('archive/data/0', 'w', force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)
    return path


def test_zip_bomb_is_refused_from_its_directory(tmp_path, monkeypatch):
    """A small zip that inflates past the cap is refused before anything is inflated; the
    message names the cap and both ways to raise it."""
    path = _zip_of_zeros(tmp_path / 'bomb.pth', 24 << 20)
    assert os.path.getsize(path) < 100_000
    message = refused(path, r'inflates to 0\.02 GB, above the 0\.01 GB limit', max_gb=0.01)
    assert '--max_gb' in message and 'MINDCOAT_MAX_CHECKPOINT_GB' in message
    monkeypatch.setenv('MINDCOAT_MAX_CHECKPOINT_GB', '0.01')
    refused(path, r'above the 0\.01 GB limit')
    monkeypatch.setenv('MINDCOAT_MAX_CHECKPOINT_GB', 'lots')
    refused(path, r'MINDCOAT_MAX_CHECKPOINT_GB must be a positive number')


def _patch_sizes(raw, name, new_size):
    """Rewrites the uncompressed size of member ``name`` in both its local header and the
    central directory (what a lying archive does)."""
    raw = bytearray(raw)
    encoded = name.encode()
    for sig, field in ((b'PK\x03\x04', 22), (b'PK\x01\x02', 24)):
        at = raw.find(sig)
        while at >= 0:
            name_at = at + (30 if sig == b'PK\x03\x04' else 46)
            if raw[name_at:name_at + len(encoded)] == encoded:
                raw[at + field:at + field + 4] = struct.pack('<I', new_size)
            at = raw.find(sig, at + 4)
    return bytes(raw)


def test_lying_zip_headers_are_caught(tmp_path, real_weights):
    """A member whose header understates its size is read only to that size and then fails the
    CRC; one that overstates it past the cap is refused before inflating."""
    member = 'official_lite_state_dict/data/0'
    raw = open(REAL_PTH, 'rb').read()
    with zipfile.ZipFile(REAL_PTH) as z:
        size = z.getinfo(member).file_size
    short = tmp_path / 'short.pth'
    short.write_bytes(_patch_sizes(raw, member, size - 4))
    refused(short, r'damaged|inflates to')
    huge = tmp_path / 'huge.pth'
    huge.write_bytes(_patch_sizes(raw, member, 0xFFFFFFF0))
    refused(huge, r'inflates to 4\.00 GB, above the 2 GB limit')


def test_flipped_byte_in_a_stored_tensor_fails_the_zip_crc(tmp_path):
    """torch stores members uncompressed: a changed byte would be read silently without the
    CRC check."""
    with zipfile.ZipFile(REAL_PTH) as z:
        info = z.getinfo('official_lite_state_dict/data/3')
    raw = bytearray(open(REAL_PTH, 'rb').read())
    name_len, extra_len = struct.unpack('<HH', raw[info.header_offset + 26:
                                                   info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + 5] ^= 0xFF
    path = tmp_path / 'flipped.pth'
    path.write_bytes(bytes(raw))
    refused(path, r'Bad CRC-32')


@pytest.mark.parametrize('cut', [0.5, 0.98])
def test_truncated_zip_is_one_line(cut, tmp_path):
    raw = open(REAL_PTH, 'rb').read()
    path = tmp_path / 'cut.pth'
    path.write_bytes(raw[:int(len(raw) * cut)])
    refused(path, r'damaged or truncated zip archive')


def test_corrupt_zip_directory_is_one_line(tmp_path):
    raw = bytearray(open(REAL_PTH, 'rb').read())
    at = raw.find(b'PK\x01\x02')  # the first member: data.pkl, which is read
    raw[at + 10:at + 40] = np.random.default_rng(1).integers(0, 256, 30, np.uint8).tobytes()
    path = tmp_path / 'corrupt.pth'
    path.write_bytes(bytes(raw))
    refused(path, r'damaged|unreadable|malformed')


# ------------------------------------------------------------------------ pickle structure
def test_pickle_cycle_is_refused(tmp_path):
    looped = {}
    looped['model'] = looped
    path = tmp_path / 'cycle.pth'
    write_torch_zip(path, None, data=pickle.dumps(looped, protocol=2))
    refused(path, r'refers to itself \(a cycle')
    chain = []
    chain.append(chain)
    write_torch_zip(path, None, data=pickle.dumps({'model': chain}, protocol=2))
    refused(path, r'a cycle')


def test_deep_nesting_and_shared_chains(tmp_path):
    nested = []
    for _ in range(200):
        nested = [nested]
    path = tmp_path / 'deep.pth'
    write_torch_zip(path, None, data=pickle.dumps({'model': nested}, protocol=2))
    refused(path, r'nested deeper than 64 levels')
    # 60 levels of [x, x]: 2^60 paths through shared objects, walked once each
    shared = []
    for _ in range(60):
        shared = (shared, shared)
    write_torch_zip(path, None, data=pickle.dumps({'extra': shared}, protocol=2))
    refused(path, r'no tensors found')


def test_non_string_weight_names_are_refused(tmp_path):
    def build(w):
        w.op(b'}(')
        w.integer(7)
        w.tensor_record('FloatStorage', '0', 4, 0, (4,), (1,))
        w.op(b'u')
    path = crafted(tmp_path / 'intkeys.pth', build,
                   storages={'0': np.ones(4, np.float32).tobytes()})
    refused(path, r'weight names must be strings, found 7 \(int\)')


@pytest.mark.parametrize('dtype', ['<U1', 'complex64', 'object'])
def test_storage_dtype_override_through_build_is_refused(dtype, tmp_path):
    """A pickle that sets a storage class's state (its dtype) before using it: the stand-ins
    take no state, so this stops at the BUILD."""
    def build(w):
        w.global_('torch', 'FloatStorage')
        w.op(b'}')
        w.string('dtype')
        w.string(dtype)
        w.op(b's')
        w.op(b'b')  # BUILD
        w.op(b'0')  # POP
        one_tensor()(w)
    path = crafted(tmp_path / 'override.pth', build,
                   storages={'0': np.ones(4, np.float32).tobytes()})
    refused(path, r"refusing setting the state of a _Token")


def test_build_on_a_rebuild_function_is_refused(tmp_path):
    """Setting attributes (e.g. __defaults__) of the reader's own functions through BUILD."""
    def build(w):
        w.global_('torch._utils', '_rebuild_tensor_v2')
        w.op(b'N}')
        w.string('__defaults__')
        w.op(b')\x86b')  # state (None, {'__defaults__': ()}), BUILD
    path = crafted(tmp_path / 'build.pth', build)
    refused(path, r'refusing')


def test_old_protocol_instance_opcodes_are_refused(tmp_path):
    data = b'(iargparse\nNamespace\n(dp0\nb.'  # INST: protocol 0's way to build an object
    path = tmp_path / 'inst.pth'
    write_torch_zip(path, None, data=data)
    refused(path, r"refusing pickle opcode b'i'")


def test_quantized_storage_is_refused(tmp_path):
    path = crafted(tmp_path / 'q.pth', one_tensor(storage_class='QInt8Storage'),
                   storages={'0': bytes(4)})
    refused(path, r"refusing to load 'torch\.QInt8Storage'")


# --------------------------------------------------------------- dtypes: all or nothing
@pytest.mark.parametrize('dtype', [np.complex64, np.int64])
def test_non_float_weights_are_refused_before_any_assignment(dtype, tmp_path, real_weights):
    """A valid file with one late parameter stored as complex or int: nothing is assigned
    (it used to load 77 of 152 parameters and then fail)."""
    weights = dict(real_weights)
    last = list(weights)[-3]
    weights[last] = weights[last].astype(dtype)
    path = tmp_path / 'mixed.pth'
    write_torch_zip(path, {'model': weights})
    refused(path, rf"real floating point, but {last} is {np.dtype(dtype)}")


# ------------------------------------------------------------------------- safetensors
def _safetensors(path, header, data=b''):
    raw = header if isinstance(header, bytes) else \
        __import__('json').dumps(header).encode()
    path.write_bytes(struct.pack('<Q', len(raw)) + raw + data)
    return path


GOOD_ENTRY = {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [0, 16]}


@pytest.mark.parametrize('case, header, match', [
    ('bad offsets', {'head.weight': dict(GOOD_ENTRY, data_offsets=[8, 4000])}, 'data_offsets'),
    ('size mismatch', {'head.weight': dict(GOOD_ENTRY, shape=[3, 3])}, 'do not fit its size'),
    ('missing dtype', {'head.weight': {'shape': [2, 2], 'data_offsets': [0, 16]}},
     'missing dtype'),
    ('unknown dtype', {'head.weight': dict(GOOD_ENTRY, dtype='F8_E4M3')}, 'unsupported'),
    ('null entry', {'head.weight': None}, 'not a tensor record'),
    ('negative shape', {'head.weight': dict(GOOD_ENTRY, shape=[-2, -2])}, 'malformed shape'),
    ('string shape', {'head.weight': dict(GOOD_ENTRY, shape='2x2')}, 'malformed shape'),
    ('not a table', [1, 2, 3], 'not a table of tensors'),
    ('bad json', b'{"head.weight": {"dtype": "F32",', 'corrupt safetensors header'),
    ('deep nesting', b'{"a": ' + b'[' * 100000 + b']' * 100000 + b'}',
     'corrupt safetensors header'),
])
def test_malformed_safetensors_is_one_line(case, header, match, tmp_path):
    path = _safetensors(tmp_path / 'bad.safetensors', header, bytes(16))
    refused(path, match)


def test_safetensors_header_longer_than_the_file(tmp_path):
    path = tmp_path / 'long.safetensors'
    path.write_bytes(struct.pack('<Q', 10**6) + b'{"a": 1}')
    refused(path, r'header length 1000000 does not fit the file')


def test_truncated_safetensors(tmp_path, real_weights):
    path = tmp_path / 'w.safetensors'
    save_file(real_weights, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 100])
    refused(path, r'do not fit its size or the file')


# ------------------------------------------------------------- which file, strict loading
def test_another_variants_file_names_that_variant(tmp_path):
    """coat_lite_small's weights into coat_lite_mini (same widths, deeper stages) used to load
    with exit 0, dropping 96 keys; now the error names the variant the file holds."""
    small = create_model('coat_lite_small')
    path = tmp_path / 'small.safetensors'
    save_file(snapshot(small), str(path))
    mini = create_model('coat_lite_mini')
    message = refused(path, r'holds coat_lite_small weights \(.*\), not coat_lite_mini',
                      model=mini)
    assert 'serial_depths=(3, 4, 6, 3)' in message and '-m coat_lite_small' in message
    refused(path, r'holds coat_lite_small weights', model=mini, strict=False)


def test_file_of_an_unregistered_shape_says_so(tmp_path):
    other = create_model('coat_lite_tiny', num_classes=10, embed_dims=(8, 16, 16, 24),
                         serial_depths=(2, 1, 1, 1), mlp_ratios=(2, 2, 1, 1))
    path = tmp_path / 'other.safetensors'
    save_file(snapshot(other), str(path))
    refused(path, r'the file has serial_depths=\(2, 1, 1, 1\).*no registered variant matches')


def test_a_file_matching_a_few_parameters_is_refused(tmp_path, real_weights):
    path = tmp_path / 'one.safetensors'
    save_file({'head.bias': real_weights['head.bias'],
               'decoder.weight': np.ones((3, 3), np.float32)}, str(path))
    refused(path, r'only 1 of \d+ parameters of coat_lite_tiny found', strict=False)
    refused(path, r'only 1 of')


def test_missing_parameters_need_non_strict(tmp_path, real_weights):
    weights = {k: v for k, v in real_weights.items() if not k.startswith('serial_blocks4')}
    path = tmp_path / 'partial.safetensors'
    save_file(weights, str(path))
    refused(path, r'parameters of coat_lite_tiny are missing .*--non_strict')
    model = tiny_model()
    report = load_weights(model, str(path), strict=False, log=quiet)
    assert report.missing and all(k.startswith('serial_blocks4') for k in report.missing)
    assert np.array_equal(model.cls_token1.asnumpy(), real_weights['cls_token1'])


# ----------------------------------------------------------------------- command line
def _convert_cli(*args, cwd):
    env = dict(os.environ, GLOG_v='2',  # MindSpore's default: its own warnings would show
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'mindcoat.convert', *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_command_line_hostile_files(tmp_path):
    """Exit 1 and exactly one stderr line for: a view past its storage, a file above the cap
    (--max_gb), a damaged CRC'd .ckpt; nothing written."""
    view = crafted(tmp_path / 'view.pth', one_tensor(size=(2, 3), stride=(10**12, 1)),
                   storages={'0': np.ones(4, np.float32).tobytes()})
    bomb = _zip_of_zeros(tmp_path / 'bomb.pth', 24 << 20)
    good = tmp_path / 'good.ckpt'
    ms.save_checkpoint([{'name': 'w', 'data': ms.Tensor(np.ones(4096, np.float32))}],
                       str(good), crc_check=True)
    raw = bytearray(good.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 200] = bytes(range(200))
    damaged = tmp_path / 'damaged.ckpt'
    damaged.write_bytes(bytes(raw))
    for src, extra, words in ((view, (), 'reaches element'),
                              (bomb, ('--max_gb', '0.01'), '--max_gb'),
                              (damaged, (), 'fails its CRC check')):
        out = tmp_path / 'out.ckpt'
        res = _convert_cli(src, '-m', 'coat_lite_tiny', '-o', out, '--model_kwargs',
                           '{"embed_dims": [8, 16, 16, 24], "serial_depths": [1, 1, 1, 1]}',
                           *extra, cwd=tmp_path)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, res.stderr[-2000:]
        assert len(lines) == 1 and words in lines[0], res.stderr[-2000:]
        assert not out.exists()
        assert not [f for f in os.listdir(tmp_path) if 'partial' in f]


def test_read_any_returns_plain_data_only():
    """What a reader hands on holds no stand-in object of the unpickler."""
    tree = read_any(REAL_PTH)
    kinds = {type(v).__name__ for v in tree.values()}
    assert kinds == {'LazyTensor'}
