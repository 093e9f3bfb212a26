"""``python -m mindcoat.ops``: which path each operator takes on this machine, and why.

Builds and probes the CPU kernels if they are not cached yet (a few seconds to a minute), then
prints one line per op (the CPU fast path, or else MindSpore's native operators, or NumPy for the
detectors' host-side steps, and the reason) and what the kernels are built with: cache
directory, compiler, target instruction set, threads.
``--json`` prints the same as one JSON object.
"""
import argparse
import json
import logging
import os
import sys


def _toolchain():
    """What the kernels are built with, as {name: text}."""
    from importlib import metadata

    from . import build
    info = {'mindcoat': os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            'mindspore': metadata.version('mindspore'), 'cache': build.cache_dir(),
            'threads': os.environ.get('MINDCOAT_NUM_THREADS', '?')}
    if build.cache_note():
        info['cache'] += f' ({build.cache_note()})'
    cxx = build.find_compiler()
    info['compiler'] = 'none found (set CXX or install g++)' if cxx is None else cxx
    info['target'] = '-'
    if cxx is not None:
        try:
            info['compiler'] = f'{cxx} ({build.compiler_version(cxx)})'
            target = build.target_isa(cxx)
            info['target'] = f"-march=native = {target['march']} ({' '.join(target['features'])})"
        except build.KernelUnavailable as err:
            info['target'] = f'unknown: {err}'
    try:
        info['onednn'] = os.path.join(build.dnnl_dir(), 'libdnnl.so.3')
    except ImportError as err:
        info['onednn'] = f'unknown: {err}'
    return info


def _decisions():
    """[{op, feature, path, detail}] for every op in dispatch.OPS on the current device."""
    from . import dispatch
    rows = []
    for op, (feature, _, sources) in dispatch.OPS.items():
        libs, reason = dispatch.decide(op)
        if libs is None:
            rows.append({'op': op, 'feature': feature, 'path': 'native', 'detail': reason})
        else:
            detail = ', '.join(libs) if libs else dispatch.WITHOUT_LIBRARY[op]
            rows.append({'op': op, 'feature': feature, 'path': 'fast', 'detail': detail})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m mindcoat.ops', description=__doc__.split(
        '\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    args = parser.parse_args(argv)
    os.environ.setdefault('GLOG_v', '3')
    import mindspore as ms
    # the table says why a library is not used: the build's warnings would repeat it
    logging.getLogger('mindcoat').addHandler(logging.NullHandler())
    logging.getLogger('mindcoat').propagate = False
    ops = _decisions()  # first: the cache line says where the kernels were put
    report = {'device': ms.get_context('device_target'), **_toolchain(), 'ops': ops}
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for name in ('mindcoat', 'mindspore', 'device', 'cache', 'compiler', 'target', 'threads',
                 'onednn'):
        print(f'{name + ":":11}{report[name]}')
    from .dispatch import HOST_OPS
    for row in report['ops']:
        path = 'CPU fast path' if row['path'] == 'fast' else \
            'NumPy' if row['op'] in HOST_OPS else 'native'
        print(f"{row['op']:10} {path:14} {row['detail']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
