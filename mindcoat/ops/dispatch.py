"""Choosing between MindSpore's native operators and the CPU fast paths of this package.

A fast path is taken only on the CPU backend (the host-side detection steps, HOST_OPS: wherever
they run) when its libraries build and pass their probe (``build``), and can be switched off with
``MINDCOAT_NATIVE=1`` (all of them) or its own variable: MINDCOAT_NATIVE_DWCONV, _GELU,
_ATTENTION, _LAYERNORM, _RESIZE, _LINEAR, _PATCH, _NORM, _CONV, _ROIALIGN, _NMS. Each choice is
logged once (logger 'mindcoat.ops', INFO); ``python -m mindcoat.ops`` prints them all with their
reasons. The choice is made when a graph is parsed (or a host step first runs) and cached per
device target in ``_choices`` (``native_ops()`` clears it to build graphs from native operators
only, as ``mindcoat.export`` does). ``export_ops()`` goes one step further for ONNX: graphs parsed
inside take each op's export form (see there).
"""
import contextlib
import ctypes
import logging
import os

import mindspore as ms

from .build import build, why

logger = logging.getLogger('mindcoat.ops')

_choices = {}  # (op, device target) -> its libraries (see fast_path), or None for native
_cells = {}  # (op, maker, libraries) -> the kernel cells built on them (see kernel_cells)
_export_form = []  # non-empty while export_ops() is active
_host = {}  # library path -> its ctypes handle, or None when it did not load


class AtParseTime:
    """A plain descriptor (not a property): MindSpore's graph parser reads it through getattr, so
    its Python body runs when the graph is built (after the device has been chosen). A property's
    body would instead be compiled as graph code, where get_context, the build and logging are
    not allowed. In PyNative mode it runs on every access (a dict lookup after the first)."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls=None):
        return self if obj is None else self.fn(obj)


# op -> (feature name in the log, its switch-off variable, the csrc/ libraries it needs). The
# patch embedding needs no library of its own: on the CPU it is a matmul over patches (through
# the linear layers' path).
OPS = {
    'dwconv': ('depthwise convolution', 'MINDCOAT_NATIVE_DWCONV', ('depthwise.cc',)),
    'crpe': ('conv relative position encoding', 'MINDCOAT_NATIVE_DWCONV', ('depthwise.cc',)),
    'attention': ('factorized attention', 'MINDCOAT_NATIVE_ATTENTION', ('transformer.cc',)),
    'resize': ('cross-scale resize', 'MINDCOAT_NATIVE_RESIZE', ('resize.cc',)),
    'linear': ('linear layers', 'MINDCOAT_NATIVE_LINEAR', ('linear.cc', 'transformer.cc')),
    'layernorm': ('LayerNorm', 'MINDCOAT_NATIVE_LAYERNORM', ('transformer.cc',)),
    'gelu': ('GELU', 'MINDCOAT_NATIVE_GELU', ('transformer.cc',)),
    'patch': ('patch embedding', 'MINDCOAT_NATIVE_PATCH', ()),
    'norm': ('global gradient norm', 'MINDCOAT_NATIVE_NORM', ()),
    'conv': ('detection head convolutions', 'MINDCOAT_NATIVE_CONV', ('linear.cc',)),
    'roi_align': ('RoIAlign (host)', 'MINDCOAT_NATIVE_ROIALIGN', ('detection.cc',)),
    'nms': ('NMS (host)', 'MINDCOAT_NATIVE_NMS', ('detection.cc',)),
}
# Steps that run on the host whatever the device (NumPy, where MindSpore has no static-shape
# form): their library is called through ctypes, and their reference path is NumPy.
HOST_OPS = frozenset({'roi_align', 'nms'})
# how the fast path of an op without a library of its own computes
WITHOUT_LIBRARY = {'patch': 'a matmul over patches (the linear layers\' path)',
                   'norm': 'one MatMul per gradient tensor for its sum of squares'}


def _flag(name):
    return os.environ.get(name, '0') not in ('', '0')


def decide(op):
    """(libraries, reason) for ``op`` on the current device: the compiled csrc/ libraries it
    needs (an empty tuple for an op without one) when its CPU fast path applies, else None and
    why not. Builds (and probes) the libraries if needed."""
    _, env_flag, sources = OPS[op]
    target = ms.get_context('device_target')
    if _flag('MINDCOAT_NATIVE') or _flag(env_flag):
        return None, f'{"MINDCOAT_NATIVE" if _flag("MINDCOAT_NATIVE") else env_flag} is set'
    if target != 'CPU' and op not in HOST_OPS:
        return None, f'device is {target}'
    libs = ()
    for source in sources:  # stops at the first that cannot be used
        lib = build(source)
        if lib is None:
            return None, f'csrc/{source}: {why(source)}'
        libs += (lib,)
    return libs, None


def fast_path(op):
    """For ``op`` (a key of OPS): the tuple of its compiled libraries (empty if it needs none)
    when the CPU fast path applies, else None. Decided once per device target and logged."""
    key = (op, ms.get_context('device_target'))
    if key not in _choices:
        libs, reason = decide(op)
        native = 'the NumPy reference' if op in HOST_OPS else "MindSpore's native operators"
        logger.info('mindcoat: %s uses %s', OPS[op][0], 'the CPU fast path' if libs is not None
                    else f'{native} ({reason})')
        _choices[key] = libs
    return _choices[key]


def host_library(op):
    """The library of a host-side ``op`` (HOST_OPS), loaded with ctypes, when its fast path
    applies, else None. A library that does not load is said once and not used."""
    libs = fast_path(op)
    if not libs:
        return None
    path = libs[0]
    if path not in _host:
        try:
            _host[path] = ctypes.CDLL(path)
        except OSError as err:
            logger.warning('mindcoat: %s uses the NumPy reference: %s did not load (%s)',
                           OPS[op][0], os.path.basename(path), err)
            _host[path] = None
    return _host[path]


def kernel_cells(op, make):
    """What ``make(*libraries)`` builds on ``op``'s compiled libraries (the Custom-op cells)
    when the CPU fast path applies, else None. Built once per maker and library set and shared
    by every graph that uses the op."""
    libs = fast_path(op)
    if libs is None:
        return None
    key = (op, make, libs)
    if key not in _cells:
        _cells[key] = make(*libs)
    return _cells[key]


def check(ok, message):
    """For the Custom ops' shape inference: a shape the kernel cannot take is a clear error when
    the graph is compiled, never a kernel failing at run time."""
    if not ok:
        raise ValueError(f'mindcoat kernel: {message}')


def all_f32(*dtypes):
    """For the Custom ops' dtype inference, which gets tensor types (``tensor[float32]``)."""
    return all((d.element_type() if hasattr(d, 'element_type') else d) == ms.float32
               for d in dtypes)


def known(*dims):
    """True if no dim is dynamic (-1, -2): only then can a shape rule be checked."""
    return all(d >= 0 for d in dims)


def check_tokens(x, hw):
    """Shape rule of every token-layout kernel: x is (B, 1 + H*W, C) on a static (H, W) grid."""
    check(len(x) == 3 and len(hw) == 2, 'tokens must be (B, 1 + H*W, C) with an (H, W) grid')
    check(known(*hw) and min(hw) >= 1, f'the grid must be static and non-empty, got {tuple(hw)}')
    if known(x[1]):
        check(x[1] == 1 + hw[0] * hw[1], f'{x[1]} tokens do not fit a {hw[0]}x{hw[1]} grid plus '
              'the class token')


@contextlib.contextmanager
def native_ops():
    """Graphs parsed inside use MindSpore's own operators only, not the compiled CPU kernels: a
    MindIR holding those Custom AOT ops could not be reloaded (their shape inference lives in
    Python) nor run by MindSpore Lite or on Ascend. Same numbers. The cached choices are
    cleared on the way in and restored on the way out."""
    saved_env = os.environ.get('MINDCOAT_NATIVE')
    saved = dict(_choices)
    os.environ['MINDCOAT_NATIVE'] = '1'
    _choices.clear()  # re-decided (now: native) when the next graph is parsed
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop('MINDCOAT_NATIVE', None)
        else:
            os.environ['MINDCOAT_NATIVE'] = saved_env
        _choices.clear()
        _choices.update(saved)


def exporting():
    """True while graphs are parsed inside ``export_ops()``: the ops then take their export form."""
    return bool(_export_form)


def _exporting(_cell):
    return exporting()


# a dispatch cell's ``export_form`` attribute: read when its graph is parsed, like ``kernel``
EXPORT_FORM = AtParseTime(_exporting)


@contextlib.contextmanager
def export_ops():
    """``native_ops()``, and the export form of every op: graphs parsed inside are built from
    operators MindSpore 2.10's ONNX exporter converts (no Erf, no ResizeBilinearV2) and hold no
    shape with the batch size in it (no BroadcastTo, no Reshape to the traced batch), so that
    the file takes any batch. Same parameters, same model definition; the results equal the
    native path's within float32 rounding. Nesting is allowed."""
    with native_ops():
        _export_form.append(True)
        try:
            yield
        finally:
            _export_form.pop()
