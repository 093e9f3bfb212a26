"""Dev-only: writes tests/fixtures/parity.npz with the reference CoaT's outputs (timm's faithful
port of mlpc-ucsd/CoaT) for the seeded weights and inputs of tests/parity_weights.py.

    /path/to/torch-venv/bin/python tools/make_parity_fixtures.py   # needs torch and timm
"""
import os
import sys

import numpy as np
import timm
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests'))
from parity_weights import BATCH, FEATURE_CASES, GRAD_CASES, GRAD_PARAMS, PARITY_CASES, SEED, \
    seed_torch_model, seeded_cotangent, seeded_input  # noqa


def reference(name, size, **kwargs):
    return seed_torch_model(timm.create_model(name, img_size=size, **kwargs).eval(), SEED)


def main():
    torch.set_num_threads(os.cpu_count())
    out = {}
    for name, (h, w) in PARITY_CASES:
        model = reference(name, (h, w))
        with torch.no_grad():
            x = torch.from_numpy(seeded_input(BATCH, h, w, SEED))
            out[f'{name}/{h}x{w}'] = model(x).numpy()
        print(name, h, w, float(np.abs(out[f'{name}/{h}x{w}']).max()))
    for name, (h, w) in FEATURE_CASES:
        model = reference(name, (h, w), return_interm_layers=True,
                          out_features=['x1_nocls', 'x2_nocls', 'x3_nocls', 'x4_nocls'])
        with torch.no_grad():
            feats = model(torch.from_numpy(seeded_input(1, h, w, SEED)))
        for i in range(4):
            out[f'{name}/features/{h}x{w}/{i}'] = feats[f'x{i + 1}_nocls'].numpy()
    for name, (h, w) in GRAD_CASES:
        model = reference(name, (h, w))
        logits = model(torch.from_numpy(seeded_input(BATCH, h, w, SEED)))
        (logits * torch.from_numpy(seeded_cotangent(BATCH, seed=SEED))).sum().backward()
        params = dict(model.named_parameters())
        for pname in GRAD_PARAMS[name]:
            out[f'{name}/grad/{h}x{w}/{pname}'] = params[pname].grad.numpy()
    path = os.path.join(HERE, '..', 'tests', 'fixtures', 'parity.npz')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **out)
    print('wrote', path, os.path.getsize(path), 'bytes')


if __name__ == '__main__':
    main()
