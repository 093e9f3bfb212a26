"""``python -m mindcoat.config --markdown``: docs/config.md, made from the key table.

``python -m mindcoat.config -c FILE [flags]`` prints the values a config resolves to (the YAML
and flags over the defaults), checked as train does, one ``key: value`` line each."""
import argparse
import sys

from .keys import GROUPS, KEYS, NOT_IN_MINDCV

HEADER = '''# Configuration keys

Every key of a training config, in the order of the YAML files. Each is also a flag
(`--batch_size 64`); precedence: the defaults below < the YAML file (`-c FILE`) < the command
line. A boolean flag given without a value means True (`--distribute`), as in MindCV. An unknown
key, in a file or on the command line, is an error naming the closest valid key; a value outside
its range is an error naming the key and what it must be.

The defaults are MindCV's, so a MindCV YAML that leaves a key out means what it means in MindCV.
The column "MindCV" gives MindCV's default, or "—" for a key only mindcoat has; "differs" says
where mindcoat's meaning is not MindCV's. "refused" keys are accepted at MindCV's default and
stop training in one line otherwise. `--resume` restores a run's own values; only the keys
marked "may change when resuming" can be given other values then.

This page is generated from `mindcoat/config/keys.py` by `python -m mindcoat.config --markdown`;
`tests/test_config.py` fails when it is out of date.
'''


def _cell(value):
    text = repr(value) if isinstance(value, str) else str(value)
    return text.replace('|', '\\|')


def markdown():
    lines = [HEADER]
    for group in GROUPS:
        lines += [f'## {group}', '', '| key | default | must be | MindCV | meaning |',
                  '|---|---|---|---|---|']
        for key in KEYS.values():
            if key.group != group:
                continue
            must = key.check.what if key.check is not None else ''
            mindcv = '—' if key.mindcv is NOT_IN_MINDCV else (
                'same' if key.mindcv == key.default else _cell(key.mindcv))
            meaning = key.help + (f'. Differs from MindCV: {key.differs}' if key.differs else '') \
                + ('. May change when resuming' if key.resume_free else '')
            lines.append(f'| `{key.name}` | {_cell(key.default)} | {must} | {mindcv} | '
                         f'{meaning} |')
        lines.append('')
    return '\n'.join(lines).rstrip() + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m mindcoat.config', description=__doc__.split(
        '\n')[0])
    p.add_argument('--markdown', action='store_true', help='print docs/config.md')
    args, rest = p.parse_known_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    from ..cli import run
    from .parse import check_training, parse_config

    def show(argv):
        cfg = parse_config(argv)
        check_training(cfg)
        for key in KEYS:
            print(f'{key}: {getattr(cfg, key)!r}')
        return 0
    return run(show, rest)


if __name__ == '__main__':
    sys.exit(main())
