"""Dev-only: writes tests/fixtures/mindcv_coat_names.json, the parameter names and shapes of
MindCV 0.3.0's CoaT models as its checkpoints store them, so that the conversion tests read a file
laid out exactly like MindCV's (q/k/v split, gamma/beta, shared cells named after their first
user, a Conv1d aggregate of shape (1, 3, 1, 1)) without MindCV installed.

    /path/to/venv-with-mindcv/bin/python tools/make_mindcv_names.py
"""
import json
import os

import mindspore as ms
from mindcv.models import create_model

MODELS = ('coat_lite_tiny', 'coat_tiny')


def main():
    ms.set_device('CPU')
    out = {name: [[p.name, list(p.shape)] for p in create_model(name).get_parameters()]
           for name in MODELS}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures',
                        'mindcv_coat_names.json')
    with open(path, 'w') as f:
        json.dump(out, f, indent=0)
    print('wrote', path, {k: len(v) for k, v in out.items()})


if __name__ == '__main__':
    main()
