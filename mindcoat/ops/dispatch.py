"""Choosing between MindSpore's native operators and the CPU fast paths of this package.

A fast path is taken only on the CPU backend, and can be switched off with ``MINDCOAT_NATIVE=1``
(all of them) or its own variable: MINDCOAT_NATIVE_DWCONV, _GELU, _ATTENTION, _LAYERNORM, _RESIZE,
_LINEAR, _PATCH. Each choice is logged once (logger 'mindcoat.ops', INFO). The choice is made when a
graph is parsed and cached per device target in ``_choices`` (``native_ops()`` clears it to build
graphs from native operators only, as ``mindcoat.export`` does).
"""
import contextlib
import logging
import os

import mindspore as ms

from .build import build

logger = logging.getLogger('mindcoat.ops')

_choices = {}  # (feature, device target) -> library path / True, or None for the native path
_cells = {}  # (feature, library path) -> the kernel cells built on it (see kernel_cells)


class AtParseTime:
    """A plain descriptor (not a property): MindSpore's graph parser reads it through getattr, so
    its Python body runs when the graph is built (after the device has been chosen). A property's
    body would instead be compiled as graph code, where get_context, the build and logging are
    not allowed. In PyNative mode it runs on every access (a dict lookup after the first)."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls=None):
        return self if obj is None else self.fn(obj)


def _flag(name):
    return os.environ.get(name, '0') not in ('', '0')


def fast_path(feature, env_flag, source=None):
    """For ``feature``: the compiled library of ``csrc/<source>`` (or True when ``source`` is None)
    if the CPU fast path applies, else None."""
    target = ms.get_context('device_target')
    key = (feature, target)
    if key in _choices:
        return _choices[key]
    reason = None
    if _flag('MINDCOAT_NATIVE') or _flag(env_flag):
        reason = f'MINDCOAT_NATIVE or {env_flag} is set'
    elif target != 'CPU':
        reason = f'device is {target}'
    choice = None
    if reason is None:
        choice = build(source) if source else True
        if choice is None:
            reason = f'csrc/{source} could not be built'
    logger.info('mindcoat: %s uses %s', feature,
                'the CPU fast path' if choice else f"MindSpore's native operators ({reason})")
    _choices[key] = choice
    return choice


def kernel_cells(feature, env_flag, source, make):
    """What ``make(library)`` builds on the compiled ``csrc/<source>`` (the Custom-op cells of a
    feature) when the CPU fast path applies, else None. Built once per library and shared by
    every graph that uses the feature."""
    lib = fast_path(feature, env_flag, source)
    if not lib:
        return None
    key = (feature, lib)
    if key not in _cells:
        _cells[key] = make(lib)
    return _cells[key]


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
