"""Writes tests/fixtures/mindcv_configs/mindcv_parsed.json: what MindCV's own argument parser
(config.py at the root of a MindCV checkout) makes of its defaults and of each MindCV CoaT YAML
in tests/fixtures/mindcv_configs/. tests/test_mindcv_configs.py and tests/test_config.py compare
mindcoat's parser against these values.

Run it with the Python of an environment where MindCV's config.py imports (it needs only PyYAML):

    git -C MINDCV show HEAD:config.py > /tmp/mindcv_config.py
    /tmp/mindcv/bin/python tools/make_mindcv_config_fixtures.py \
        --mindcv_config /tmp/mindcv_config.py \
        --mindcv_commit $(git -C MINDCV rev-parse HEAD)

MINDCV is a clone of mindspore-lab/mindcv; the committed JSON came from commit 51b0636.
"""
import argparse
import glob
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, 'tests', 'fixtures', 'mindcv_configs')


def load_module(path):
    spec = importlib.util.spec_from_file_location('mindcv_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain(value):
    """JSON-ready: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def parsed(module, argv):
    args = module.parse_args(argv)
    return {k: plain(v) for k, v in sorted(vars(args).items()) if k != 'config'}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--mindcv_config', required=True, help="MindCV's config.py")
    p.add_argument('--mindcv_commit', required=True, help='the commit it comes from')
    p.add_argument('-o', '--output', default=os.path.join(FIXTURES, 'mindcv_parsed.json'))
    args = p.parse_args(argv)
    module = load_module(args.mindcv_config)
    out = {'source': f'mindspore-lab/mindcv config.py at {args.mindcv_commit}',
           'defaults': parsed(module, []), 'configs': {}}
    for path in sorted(glob.glob(os.path.join(FIXTURES, '*.yaml'))):
        out['configs'][os.path.basename(path)] = parsed(module, ['-c', path])
    with open(args.output, 'w') as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write('\n')
    print(f"wrote {args.output}: {len(out['defaults'])} keys, {len(out['configs'])} configs")


if __name__ == '__main__':
    main()
