"""Builds a registered CoaT variant by name, with overrides of its architecture. No weights: a
model comes out freshly initialised (``mindcoat.create_model`` loads them)."""
import inspect

from ..errors import UsageError
from .coat import CoaT
from .registry import ARCHS, DATA_CONFIGS, list_models

# set by the builder itself; every other argument of CoaT is an architecture override
_SET_BY_BUILDER = {'self', 'num_classes', 'in_channels', 'features_only', 'out_indices'}
ARCH_ARGS = tuple(p for p in inspect.signature(CoaT.__init__).parameters
                  if p not in _SET_BY_BUILDER)


def check_model_name(model_name):
    if model_name not in ARCHS:
        raise UsageError(f"unknown model '{model_name}'; choose one of: "
                         f"{', '.join(list_models())}")


def check_arch_args(model_name, arch, valid_also=()):
    """TypeError naming the keyword arguments that are neither architecture overrides nor in
    ``valid_also`` (the caller's own arguments, listed in the message)."""
    unknown = sorted(set(arch) - set(ARCH_ARGS))
    if unknown:
        valid = f"{', '.join(valid_also)} and " if valid_also else ''
        raise TypeError(f"create_model('{model_name}') got unexpected keyword argument(s) "
                        f"{', '.join(repr(k) for k in unknown)}; valid: {valid}the "
                        f"architecture overrides {', '.join(ARCH_ARGS)}")


def build_coat(model_name, num_classes=1000, in_channels=3, features_only=False,
               out_indices=(0, 1, 2, 3), **arch):
    """A freshly initialised ``model_name`` (a key of ARCHS). ``arch``: overrides of the
    variant's architecture (CoaT's arguments; None means the variant's value, as in MindCV).
    ``model.name`` is the variant and ``model.default_cfg`` its data defaults."""
    check_model_name(model_name)
    check_arch_args(model_name, arch)
    arch = {k: v for k, v in arch.items() if v is not None}
    model = CoaT(**dict(ARCHS[model_name], **arch), num_classes=num_classes,
                 in_channels=in_channels, features_only=features_only, out_indices=out_indices)
    model.name = model_name
    model.default_cfg = dict(DATA_CONFIGS[model_name], num_classes=num_classes,
                             architecture=model_name)
    return model
