"""The optimizer a config names, built for a model: one place that reads the optimizer keys."""
from mindspore import nn

from .adamw import AdamW, split_decay
from .lion import LION_BETAS, Lion

OPTIMIZERS = ('adamw', 'lion')
# what MindCV's create_optimizer also knows; named in the error so its users see what is missing
MINDCV_ONLY = ('sgd', 'nesterov', 'momentum', 'adam', 'rmsprop', 'adagrad', 'lamb', 'nadam',
               'adan')
WEIGHT_DECAY_FILTERS = ('disable', 'auto', 'norm_and_bias')
ADAM_BETAS = (0.9, 0.999)  # the config's default for `betas`
ADAM_EPS = 1e-8  # AdamW's own (MindCV's and timm's)


_NORM_LEAVES = {'weight': 'gamma', 'bias': 'beta'}


def _is_norm(cell):
    return 'Norm' in type(cell).__name__ or isinstance(cell, (nn.LayerNorm, nn.BatchNorm2d))


def mindspore_names(model):
    """{parameter name: the name MindSpore's own layers would give it}: a norm layer's
    weight/bias are ``gamma``/``beta`` in MindSpore (and in MindCV's CoaT), whatever this model
    calls them. MindCV's filters match those substrings."""
    names = {}
    for _, cell in model.cells_and_names():
        norm = _is_norm(cell)
        for p in cell.get_parameters(expand=False):
            stem, _, leaf = p.name.rpartition('.')
            leaf = _NORM_LEAVES.get(leaf, leaf) if norm else leaf
            names.setdefault(p.name, f'{stem}.{leaf}' if stem else leaf)
    return names


def mindcv_decays(names, weight_decay, weight_decay_filter, no_weight_decay=()):
    """Weight decay per name (MindSpore spelling) as MindCV 0.3.0's create_optimizer assigns it:
    ``disable``: every parameter decays; ``auto``: MindSpore's Optimizer default, every name
    without 'beta' or 'gamma' (norms) decays; ``norm_and_bias``: names containing 'beta',
    'gamma' or 'bias', and the model's ``no_weight_decay()`` names, do not decay."""
    if weight_decay_filter not in WEIGHT_DECAY_FILTERS:
        raise ValueError(f"weight_decay_filter '{weight_decay_filter}': choose one of "
                         f"{', '.join(WEIGHT_DECAY_FILTERS)} (or leave it unset: "
                         "filter_bias_and_bn)")
    if weight_decay_filter == 'disable':
        exempt = lambda n: False  # noqa: E731
    elif weight_decay_filter == 'auto':
        exempt = lambda n: 'beta' in n or 'gamma' in n  # noqa: E731
    else:
        skip = set(no_weight_decay)
        exempt = lambda n: 'beta' in n or 'gamma' in n or 'bias' in n or n in skip  # noqa: E731
    return [0.0 if exempt(n) else weight_decay for n in names]


def weight_decays(model, params, cfg):
    """Per-parameter weight decay: MindCV's ``weight_decay_filter`` when set, else ours
    (``filter_bias_and_bn``: no decay on class tokens, norms and biases)."""
    if cfg.weight_decay_filter is None:
        return split_decay(params, model.no_weight_decay_names(), cfg.weight_decay,
                           cfg.filter_bias_and_bn)
    spelled = mindspore_names(model)
    # MindCV's CoaT defines no no_weight_decay(): its class tokens decay under norm_and_bias
    return mindcv_decays([spelled[p.name] for p in params], cfg.weight_decay,
                         cfg.weight_decay_filter)


def create_optimizer(model, cfg):
    """An optimizer Cell for ``model``'s trainable parameters from the trainer's config:
    ``optimizer(grads, lr)`` updates them in place; ``optimizer.state_params()`` lists the state
    a resume restores."""
    params = model.trainable_params()
    opt = cfg.opt.lower()
    if opt not in OPTIMIZERS:
        known = ' (MindCV has it; not implemented here)' if opt in MINDCV_ONLY else ''
        raise ValueError(f"opt '{cfg.opt}'{known}: choose one of {', '.join(OPTIMIZERS)}")
    if getattr(cfg, 'layer_decay', None) is not None:
        raise ValueError("layer_decay (layer-wise lr decay) is not implemented here; "
                         "remove it from the config")
    decays = weight_decays(model, params, cfg)
    betas = _betas(cfg, LION_BETAS if opt == 'lion' else ADAM_BETAS)
    if opt == 'lion':
        return Lion(params, decays, betas=betas)
    return AdamW(params, decays, betas=betas, eps=_setting(cfg, 'eps', ADAM_EPS))


def _setting(cfg, key, default):
    """``cfg.<key>`` when the YAML or the command line set it, else ``default``. (MindCV's
    create_optimizer passes its ``eps`` key to rmsprop only: its AdamW always runs at 1e-8, as
    timm's, whatever the config's default 1e-10 says.)"""
    given = getattr(cfg, 'given', None)
    return getattr(cfg, key) if given is None or key in given else default


def _betas(cfg, default):
    """``betas`` as set in the YAML or on the command line, else the optimizer's own default
    (MindCV passes none to Lion: 0.9, 0.99). Without a record of what was set (``cfg.given``),
    the config default (Adam's) stands for 'not set'."""
    given = getattr(cfg, 'given', None)
    betas = None if cfg.betas is None else tuple(cfg.betas)
    if given is not None:
        return betas if 'betas' in given and betas is not None else default
    return default if betas is None or betas == ADAM_BETAS else betas
