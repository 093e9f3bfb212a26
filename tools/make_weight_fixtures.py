"""Dev-only: writes tests/fixtures/weights/, small weight files written by the real tools from
shrunken CoaT variants, and the logits those tools compute for a fixed input.

    /path/to/torch-venv/bin/python tools/make_weight_fixtures.py    # torch 2.x, timm, einops
    /path/to/mindcv-venv/bin/python tools/make_weight_fixtures.py   # mindspore, mindcv 0.3.0

Each run writes the files of the tools it can import and updates reference.npz with their keys:

- ``official_lite_state_dict.pth``: ``torch.save(model.state_dict())`` of the official CoaT-Lite
  class (mlpc-ucsd/CoaT src/models/coat.py, read from its git mirror).
- ``official_trainer_checkpoint.pth``: the dict src/main.py saves for a CoaT with parallel blocks
  (model, model_ema, optimizer, lr_scheduler, epoch, args), built with the objects main.py builds
  (timm's create_optimizer / create_scheduler / ModelEma, the args of src/args.py's parser) after
  one AMP training step, plus the 'scaler' entry that DeiT's trainer adds (GradScaler state).
- ``timm_lite.safetensors``: safetensors.torch.save_file of timm's CoaT-Lite state dict.
- ``torch_objects.pth``: the other objects torch writes into weight files (bfloat16 / float16 /
  int / bool tensors, non-contiguous views, a view into a larger storage, an expanded (stride 0)
  tensor, a 0-d tensor, a Parameter with Python attributes, torch.Size, a dtype), pickle
  protocol 4; their values go to reference.npz as ``objects/<key>``.
- ``mindcv_coat.ckpt``: ms.save_checkpoint of MindCV 0.3.0's CoaT (parallel blocks). Its
  logits are computed with one line of MindCV patched: MindCV's SerialBlock adds the attention
  branch to the block's input instead of to the output of the convolutional position encoding
  (official, timm: ``x = cpe(x); x = x + attn(norm1(x))``), so MindCV's own outputs are not the
  official function of its weights (measured: logits differ by up to 1.6 on this fixture).
"""
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'tests', 'fixtures', 'weights')
sys.path.insert(0, os.path.join(HERE, '..', 'tests'))
from parity_weights import seed_torch_model, seeded_input, seeded_weights  # noqa: E402

OFFICIAL_REPO = os.environ.get('COAT_MIRROR', '/work/.mirror/mlpc-ucsd+CoaT/repo')
NUM_CLASSES = 10
IMAGE = 32
# the shrunken variants; the tests build mindcoat models with the same model_kwargs
LITE = dict(embed_dims=[8, 16, 16, 24], serial_depths=[1, 1, 1, 1], parallel_depth=0,
            num_heads=8, mlp_ratios=[2, 2, 1, 1])
COAT = dict(embed_dims=[8, 16, 16, 16], serial_depths=[1, 1, 1, 1], parallel_depth=1,
            num_heads=8, mlp_ratios=[1, 1, 1, 1])


def reference_input():
    return seeded_input(1, IMAGE, IMAGE, seed=7)


def update_reference(values):
    path = os.path.join(OUT, 'reference.npz')
    old = dict(np.load(path)) if os.path.exists(path) else {}
    old.update(values)
    old['input'] = reference_input()
    np.savez_compressed(path, **old)


# ----------------------------------------------------------------------------- torch / timm
def official_module():
    """src/models/coat.py of the official repository, imported from its git mirror."""
    source = subprocess.run(['git', '-C', OFFICIAL_REPO, 'show', 'HEAD:src/models/coat.py'],
                            check=True, capture_output=True, text=True).stdout
    # its @register_model entries would shadow timm's own coat_* names in this process
    source = source.replace('@register_model\n', '')
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, 'official_coat.py')
    with open(path, 'w') as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location('official_coat', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_args(model_name):
    """The Namespace main.py saves: src/args.py's parser, then what main() sets on it."""
    source = subprocess.run(['git', '-C', OFFICIAL_REPO, 'show', 'HEAD:src/args.py'],
                            check=True, capture_output=True, text=True).stdout
    scope = {}
    exec(compile(source, 'src/args.py', 'exec'), scope)  # defines get_args_parser (argparse only)
    args = scope['get_args_parser']().parse_args([
        '--model', model_name, '--batch-size', '2', '--epochs', '300', '--model-ema',
        '--model-ema-decay', '0.5', '--model_kwargs', repr(COAT), '--output_dir', 'output',
        '--data-path', 'imagenet'])
    args.distributed = False  # utils.init_distributed_mode without a launcher
    args.nb_classes = NUM_CLASSES  # build_dataset
    args.lr = args.lr * args.batch_size * 1 / 512.0  # linear scaling in main()
    return args


def logits(model):
    import torch
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(reference_input())).numpy()


def write_official_state_dict(official):
    import torch
    model = seed_torch_model(official.CoaT(patch_size=4, num_classes=NUM_CLASSES, **LITE), 1)
    torch.save(model.state_dict(), os.path.join(OUT, 'official_lite_state_dict.pth'))
    return {'official_lite_state_dict': logits(model)}


def write_official_trainer_checkpoint(official):
    import torch
    from timm.optim import create_optimizer
    from timm.scheduler import create_scheduler
    from timm.utils import ModelEma, get_state_dict
    args = official_args('coat_tiny')
    torch.manual_seed(args.seed)
    model = official.CoaT(patch_size=4, num_classes=NUM_CLASSES, **COAT)
    model_ema = ModelEma(model, decay=args.model_ema_decay, device='cpu', resume='')
    seed_torch_model(model, 2)  # so that the EMA (half initial, half these) differs visibly
    optimizer = create_optimizer(args, model)
    lr_scheduler, _ = create_scheduler(args, optimizer)
    # main.py's NativeScaler wraps torch.cuda.amp.GradScaler, disabled without CUDA: use the
    # CPU scaler so that its state is real
    scaler = torch.amp.GradScaler('cpu')
    model.train()
    images = torch.from_numpy(seeded_input(2, IMAGE, IMAGE, seed=3))
    target = torch.tensor([1, 4])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    model_ema.update(model)
    lr_scheduler.step(1)
    checkpoint = {
        'model': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'lr_scheduler': lr_scheduler.state_dict(),
        'epoch': 1,
        'model_ema': get_state_dict(model_ema),
        'args': args,
        'scaler': scaler.state_dict(),
    }
    torch.save(checkpoint, os.path.join(OUT, 'official_trainer_checkpoint.pth'))
    return {'official_trainer_checkpoint': logits(model),
            'official_trainer_checkpoint/ema': logits(model_ema.ema)}


def write_timm_safetensors():
    import timm
    from safetensors.torch import save_file
    model = timm.models.coat.CoaT(img_size=IMAGE, patch_size=4, num_classes=NUM_CLASSES, **LITE)
    seed_torch_model(model, 4)
    # save_file refuses tensors that share memory: keep one name per shared module, as timm's
    # hub files do
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            state[name] = tensor.contiguous()
    save_file(state, os.path.join(OUT, 'timm_lite.safetensors'), metadata={'format': 'pt'})
    return {'timm_lite': logits(model)}


def write_torch_objects():
    import torch
    gen = torch.Generator().manual_seed(6)
    base = torch.randn(6, 5, generator=gen)
    shared = torch.arange(20, dtype=torch.float32)
    param = torch.nn.Parameter(torch.randn(3, generator=gen))
    param.note = 'an attribute: torch writes _rebuild_parameter_with_state'
    tensors = {
        'bfloat16': torch.randn(4, 3, generator=gen).to(torch.bfloat16),
        'float16': torch.randn(7, generator=gen).half(),
        'int64': torch.arange(-3, 5),
        'bool': torch.tensor([True, False, True]),
        'transposed': base.t(),
        'strided': base[::2, 1::2],
        'offset_view': shared[5:11].view(2, 3),
        'expanded': torch.ones(1, 3).expand(4, 3),
        'scalar': torch.tensor(3.5),
        'parameter': param,
    }
    obj = dict(tensors, size=torch.Size([2, 3]), dtype=torch.float32)
    torch.save(obj, os.path.join(OUT, 'torch_objects.pth'), pickle_protocol=4)
    return {f'objects/{k}': v.detach().float().numpy() if v.dtype == torch.bfloat16 else
            v.detach().numpy() for k, v in tensors.items()}


def torch_fixtures():
    import torch
    torch.set_num_threads(2)
    official = official_module()
    values = {}
    values.update(write_official_state_dict(official))
    values.update(write_official_trainer_checkpoint(official))
    values.update(write_timm_safetensors())
    values.update(write_torch_objects())
    update_reference(values)


# ----------------------------------------------------------------------------- MindCV
def _official_serial_block(self, x, size):
    """MindCV's SerialBlock.construct with the official residual (see the module docstring)."""
    x = self.cpe(x, size)
    x = x + self.drop_path(self.factoratt_crpe(self.norm1(x), size))
    return x + self.drop_path(self.mlp(self.norm2(x)))


def mindcv_fixtures():
    import mindspore as ms
    from mindcv.models import coat
    ms.set_device('CPU')
    coat.SerialBlock.construct = _official_serial_block
    model = coat.CoaT(image_size=IMAGE, patch_size=4, num_classes=NUM_CLASSES, **COAT)
    shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    weights = seeded_weights(shapes, 5)
    for p in model.get_parameters():
        p.set_data(ms.Tensor(weights[p.name]))
    model.set_train(False)
    ms.save_checkpoint(model, os.path.join(OUT, 'mindcv_coat.ckpt'))
    out = model(ms.Tensor(reference_input())).asnumpy()
    update_reference({'mindcv_coat': out})


def main():
    os.makedirs(OUT, exist_ok=True)
    ran = []
    if importlib.util.find_spec('torch') and importlib.util.find_spec('timm'):
        torch_fixtures()
        ran.append('torch/timm')
    if importlib.util.find_spec('mindcv'):
        mindcv_fixtures()
        ran.append('mindcv')
    if not ran:
        sys.exit('needs torch + timm (+ einops) or mindcv in this environment')
    for name in sorted(os.listdir(OUT)):
        print(f'{name}: {os.path.getsize(os.path.join(OUT, name))} bytes')
    print('wrote', ', '.join(ran))


if __name__ == '__main__':
    main()
