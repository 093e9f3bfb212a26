"""What every command shares: ``run``, the one place that turns a MindcoatError into one line on
stderr and an exit status, and the steps of the inference tools (validate, predict, export):
the model and its settings from the command line, a config file and the checkpoint itself."""
import json
import os
import sys
import traceback

from .errors import MindcoatError, UsageError
from .fileio import regular_file

DEBUG_FLAG = '--debug'
DEBUG_ENV = 'MINDCOAT_DEBUG'


def run(main, argv=None):
    """``main(argv)`` with the errors a user can act on said in one line: ``error: <message>``
    on stderr, exit status the error's ``exit_code`` (2: the command line or config; 1: the
    rest). Ctrl-C is one line and 130. ``--debug`` (removed from ``argv``) or MINDCOAT_DEBUG=1
    keeps the traceback. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get(DEBUG_ENV, '0') not in ('', '0')
    if DEBUG_FLAG in argv:
        argv = [a for a in argv if a != DEBUG_FLAG]
        debug = True
    try:
        return main(argv) or 0
    except MindcoatError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        return 130


def parse_model_kwargs(text):
    """--model_kwargs '{"embed_dims": [32, 64, 128, 160], "serial_depths": [1, 1, 1, 1]}':
    architecture overrides forwarded to create_model (lists become tuples)."""
    if not text:
        return {}
    if isinstance(text, dict):
        kwargs = text
    else:
        try:
            kwargs = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--model_kwargs is not valid JSON ({exc.msg}): {text}") from None
    if not isinstance(kwargs, dict):
        raise UsageError(f"--model_kwargs must be a JSON object, got: {text}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def check_image_size(size):
    """The data layer's rule for an input size, as a command-line error."""
    from .data.settings import eval_setting_problem
    problem = eval_setting_problem('image_resize', size)
    if problem:
        raise UsageError(problem)


def build_model(name, ckpt_path=None, num_classes=1000, in_channels=3, use_ema=False,
                model_kwargs=None, log=print, pretrained=False):
    """create_model with its weights (``ckpt_path``, or ``pretrained=True``: the official ones,
    which create_model downloads), in inference mode. Bad names, bad overrides and unusable
    checkpoints surface as UsageError / CheckpointError with a one-line message."""
    from .factory import create_model
    from .models import list_models
    if name not in list_models():
        raise UsageError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    if not ckpt_path and not pretrained:
        log("warning: no checkpoint given, the weights are random")
    try:
        model = create_model(name, num_classes=num_classes, in_channels=in_channels,
                             pretrained=pretrained or False, checkpoint_path=ckpt_path or '',
                             ema=use_ema, log=log, **(model_kwargs or {}))
    except TypeError as exc:  # an override create_model does not know
        raise UsageError(f"bad model override for {name}: {exc}") from None
    model.set_train(False)
    return model


# training-config keys a tool can take from a YAML file -> the tool's own argument names
CONFIG_KEYS = {'model': 'model', 'num_classes': 'num_classes', 'in_channels': 'in_channels',
               'model_kwargs': 'model_kwargs', 'image_resize': 'image_size',
               'crop_pct': 'crop_pct', 'interpolation': 'interpolation', 'mean': 'mean',
               'std': 'std'}


def apply_config(args):
    """``-c/--config`` for predict and export: the model and eval settings of a training YAML
    (configs/...), for every argument not given on the command line (those default to None)."""
    if getattr(args, 'config', None):
        from .config import load_yaml
        values = load_yaml(args.config)  # ConfigError (a ValueError) names a bad key
        for key, dest in CONFIG_KEYS.items():
            if values.get(key) is not None and getattr(args, dest, None) is None:
                setattr(args, dest, values[key])
    if not getattr(args, 'model', None):
        raise UsageError("say which model: --model NAME (or -c CONFIG.yaml)")
    return args


# what a tool's count arguments may be at most: beyond these a value is a typo, not a request
MOST = {'batch_size': 4096, 'topk': 1_000_000, 'num_classes': 1_000_000, 'in_channels': 64}


def check_at_least_one(args, names):
    """Integer arguments that must be >= 1 when given (a batch of 0 images, a top-0 list), and
    not absurdly large (a batch of 10**12 images)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
        if value is not None and value > MOST.get(name, value):
            raise UsageError(f"--{name} must be at most {MOST[name]:,}, got {value}")


def checkpoint_settings(args):
    """checkpoint_info of --ckpt_path (which must be a regular file), or {} without one."""
    if not args.ckpt_path:
        return {}
    from .weights import checkpoint_info
    return checkpoint_info(regular_file(args.ckpt_path, 'checkpoint'))


def resolve_model(args, info):
    """The model from the command line, else -c CONFIG, else the checkpoint; its model_kwargs
    from the checkpoint when it is the checkpoint's model and none were given."""
    if args.config:
        regular_file(args.config, 'config file')
    elif not args.model and info.get('model'):
        args.model = info['model']
    apply_config(args)
    if args.model_kwargs is None and args.model == info.get('model'):
        args.model_kwargs = info.get('model_kwargs')
    return args


def take_from_checkpoint(args, info, settings=(), given=None):
    """num_classes and in_channels are the checkpoint's (a different head would be
    re-initialised: random predictions): a different value on the command line (``given``, the
    arguments as parsed, before -c) is refused; one from -c CONFIG (a recipe's, e.g. ImageNet's
    1000) yields to the checkpoint. The eval ``settings`` the checkpoint stored are used where
    neither the command line nor -c set them. Returns notes for the log."""
    given, notes = vars(given or args), []
    for key, unit in (('num_classes', 'classes'), ('in_channels', 'input channels')):
        theirs, mine = info.get(key), getattr(args, key)
        if theirs is None or mine == theirs:
            continue
        if given.get(key) is not None:
            raise UsageError(f"--{key} {mine} contradicts {args.ckpt_path}, whose weights have "
                             f"{theirs} {unit}; drop --{key}")
        if mine is not None:
            notes.append(f"{key} {theirs} from {args.ckpt_path} (the config says {mine})")
        setattr(args, key, theirs)
    for key in settings:
        if getattr(args, key, None) is None and info.get(key) is not None:
            setattr(args, key, info[key])
    return notes
