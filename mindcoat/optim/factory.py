"""The optimizer the settings name, built for a model: one place that reads the optimizer keys."""
from dataclasses import dataclass

from mindspore import nn

from ..errors import ConfigError
from ..typed import Settings
from .adamw import AdamW, split_decay
from .lion import LION_BETAS, Lion

OPTIMIZERS = ('adamw', 'lion')
# what MindCV's create_optimizer also knows; named in the error so its users see what is missing
MINDCV_ONLY = ('sgd', 'nesterov', 'momentum', 'adam', 'rmsprop', 'adagrad', 'lamb', 'nadam',
               'adan')
WEIGHT_DECAY_FILTERS = ('disable', 'auto', 'norm_and_bias')
ADAM_BETAS = (0.9, 0.999)  # torch's and MindCV's AdamW
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
        raise ConfigError(f"weight_decay_filter '{weight_decay_filter}': choose one of "
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


def optimizer_problem(name):
    """Why ``name`` cannot be built here (one line), or None."""
    if str(name).lower() in OPTIMIZERS:
        return None
    known = ' (MindCV has it; not implemented here)' if str(name).lower() in MINDCV_ONLY else ''
    return f"opt '{name}'{known}: choose one of {', '.join(OPTIMIZERS)}"


@dataclass(frozen=True)
class OptimizerSettings(Settings):
    """What the optimizer is built from. ``betas``/``eps`` None: the optimizer's own (AdamW
    0.9/0.999 and 1e-8, Lion 0.9/0.99). ``weight_decay_filter`` None: ``filter_bias_and_bn``
    decides (no decay on class tokens, norms and biases)."""
    opt: str
    weight_decay: float
    filter_bias_and_bn: bool
    weight_decay_filter: str
    betas: tuple
    eps: float


def weight_decays(model, params, settings):
    """Per-parameter weight decay: MindCV's ``weight_decay_filter`` when set, else ours
    (``filter_bias_and_bn``: no decay on class tokens, norms and biases)."""
    if settings.weight_decay_filter is None:
        return split_decay(params, model.no_weight_decay_names(), settings.weight_decay,
                           settings.filter_bias_and_bn)
    spelled = mindspore_names(model)
    # MindCV's CoaT defines no no_weight_decay(): its class tokens decay under norm_and_bias
    return mindcv_decays([spelled[p.name] for p in params], settings.weight_decay,
                         settings.weight_decay_filter)


def create_optimizer(model, settings):
    """An optimizer Cell for ``model``'s trainable parameters (``settings``: OptimizerSettings, or
    anything carrying its fields): ``optimizer(grads, lr)`` updates them in place;
    ``optimizer.state_params()`` lists the state a resume restores."""
    settings = OptimizerSettings.of(settings)
    params = model.trainable_params()
    opt = settings.opt.lower()
    if optimizer_problem(opt):
        raise ConfigError(optimizer_problem(settings.opt))
    decays = weight_decays(model, params, settings)
    betas = tuple(settings.betas) if settings.betas is not None else \
        (LION_BETAS if opt == 'lion' else ADAM_BETAS)
    if opt == 'lion':
        return Lion(params, decays, betas=betas)
    return AdamW(params, decays, betas=betas,
                 eps=ADAM_EPS if settings.eps is None else settings.eps)
