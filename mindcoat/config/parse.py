"""The config layer: YAML files and flags into one checked set of values.

One argparse parser whose groups mirror the YAML files, made from the key table
(``mindcoat.config.keys``): every key is a flag, ``-c/--config`` names a YAML file. Precedence:
the table's defaults < the YAML < the command line. Booleans take a value (``--distribute
False``) or none (``--distribute`` means True, as in MindCV). An unknown key, in the YAML or on
the command line, is an error naming the closest valid key; a value outside its range is an
error naming the key. As in MindCV, ``lr`` is absolute unless ``lr_base_batch`` is set.

    from mindcoat.config import parse_config
    cfg = parse_config(['-c', 'configs/coat/coat_lite_tiny_ascend.yaml', '--data_dir', '/data'])
"""
import argparse
import difflib
import os
import sys

import yaml

from ..errors import ConfigError
from ..fileio import read_small_text
from .keys import GROUPS, KEYS, literal


class _Parser(argparse.ArgumentParser):
    """Says a bad flag value in one line (ConfigError), not with the whole usage text."""

    def error(self, message):
        raise ConfigError(f"command line: {message} (see --help)")


def create_parser(description='Train CoaT with MindSpore'):
    """The full parser (also used by validate): ``-c/--config`` plus one flag per key, all
    defaulting to SUPPRESS so that only what the user typed overrides the YAML."""
    parser = _Parser(description=description, allow_abbrev=False)
    parser.add_argument('-c', '--config', default=None, help='YAML file; flags override it')
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for key in KEYS.values():
        bare = dict(nargs='?', const=True) if key.bare_true else {}
        groups[key.group].add_argument('--' + key.name, type=key.type,
                                       default=argparse.SUPPRESS,
                                       help=f'{key.help} (default: {key.default})', **bare)
    return parser


def closest_key(key):
    match = difflib.get_close_matches(key, list(KEYS), n=1, cutoff=0.0)
    return match[0] if match else None


def _unknown(key, where):
    return ConfigError(f"unknown config key '{key}' in {where}; did you mean '{closest_key(key)}'?")


def coerce(key, value):
    """A YAML value converted like the same value typed on the command line."""
    typ = KEYS[key].type
    if value is None or (typ is literal and not isinstance(value, str)):
        return value
    return typ(value)


# A config file is a page of settings: these bounds stop a file that is not one (a binary, or a
# few hundred bytes of nested YAML aliases that expand to billions of nodes) before it is used.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def _count_nodes(value, budget):
    """Nodes in ``value`` with aliases expanded, counting down from ``budget``; stops (returns a
    negative number) as soon as the budget is spent, so an alias bomb is never walked whole."""
    budget -= 1
    if isinstance(value, dict):
        items = [x for kv in value.items() for x in kv]
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return budget
    for item in items:
        if budget < 0:
            break
        budget = _count_nodes(item, budget)
    return budget


def configs_dir():
    """The shipped configs/: inside the installed package (a wheel carries it), else beside the
    package in a checkout."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in (os.path.join(package, 'configs'),
                   os.path.join(os.path.dirname(package), 'configs')):
        if os.path.isdir(folder):
            return folder
    return None


def find_config(path):
    """``path`` if it exists, else the shipped config of that name (``configs/coat/x.yaml`` or
    ``coat/x.yaml``), so the commands in the docs work from an installed wheel too."""
    if os.path.lexists(path) or os.path.isabs(path):
        return path
    shipped = configs_dir()
    parts = os.path.normpath(path).split(os.sep)
    if shipped and parts[0] == 'configs':
        parts = parts[1:]
    candidate = os.path.join(shipped, *parts) if shipped and parts else None
    return candidate if candidate and os.path.isfile(candidate) else path


def _yaml_problem(error):
    """A YAML error as one phrase with its line and column."""
    mark = getattr(error, 'problem_mark', None)
    what = getattr(error, 'problem', None) or (str(error).splitlines() or
                                               [type(error).__name__])[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    return what


def load_yaml(path):
    """The keys of a config file, each read as the same value typed on the command line.
    ConfigError (one line) for anything else: unknown keys, bad values, a file that is not
    YAML text of settings."""
    path = find_config(path)
    text = read_small_text(path, 'config file', ConfigError, MAX_YAML_BYTES)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} nests too deeply: not a config file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    if _count_nodes(data, MAX_YAML_NODES) < 0:
        raise ConfigError(f"config file {path} expands to more than {MAX_YAML_NODES} values "
                          "(nested YAML aliases?): not a config file")
    out = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {path}: key {key!r} is not a name (keys are words "
                              "such as batch_size)")
        if key not in KEYS:
            raise _unknown(key, path)
        try:
            out[key] = coerce(key, value)
        except (ValueError, TypeError, OverflowError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad value for '{key}' in {path}: {e}") from None
    return out


def check_values(cfg):
    """ConfigError (one line) for the first value its key's row refuses, then for values that
    do not fit together. Every command runs this on what it parsed."""
    for key in KEYS.values():
        if key.check is not None:
            problem = key.check.problem(key.name, getattr(cfg, key.name))
            if problem:
                raise ConfigError(problem)
    if cfg.warmup_epochs > cfg.epoch_size:
        raise ConfigError(f"warmup_epochs {cfg.warmup_epochs:g} is longer than the run "
                          f"(epoch_size {cfg.epoch_size}): pass --warmup_epochs "
                          f"{min(1, cfg.epoch_size - 1)} or another value below the run's "
                          f"length")


def check_training(cfg):
    """What training cannot honour (MindCV keys at values it does not implement), one
    ConfigError each, saying what to do, before anything is built or compiled."""
    for key in KEYS.values():
        if key.refuse is not None:
            problem = key.refuse.problem(key.name, getattr(cfg, key.name))
            if problem:
                raise ConfigError(problem)
    if cfg.resume_opt and cfg.ckpt_path:
        raise ConfigError("resume_opt with ckpt_path is MindCV's way to continue a run: here use "
                          f"--resume {cfg.ckpt_path} (a mindcoat training checkpoint: weights, "
                          "EMA, optimizer, step and epoch) instead of --ckpt_path and "
                          "--resume_opt")
    if cfg.num_samples is not None and cfg.aug_repeats > 1:
        raise ConfigError("num_samples and aug_repeats cannot be set together (as in MindCV): "
                          "set one of them to its default")


def parse_config(argv=None, parser=None):
    """Parses ``argv`` (default: sys.argv[1:]) into an ``argparse.Namespace`` holding every key.
    Raises ConfigError with a one-line message on an unknown key or a bad value."""
    parser = parser or create_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        if arg.startswith('--') and arg[2:].split('=')[0] not in KEYS and \
                arg[2:].split('=')[0] not in ('config', 'help'):
            raise _unknown(arg[2:].split('=')[0], 'the command line')
    args = parser.parse_args(argv)
    values = {key.name: key.default for key in KEYS.values()}
    from_file = load_yaml(args.config) if args.config else {}
    values.update(from_file)
    typed = {k: v for k, v in vars(args).items() if k != 'config'}
    values.update(typed)
    values['config'] = args.config
    cfg = argparse.Namespace(**values)
    check_values(cfg)
    # what the user typed, for tools that let a checkpoint's own values win over the YAML's
    cfg.command_line = argparse.Namespace(**typed)
    # every key the YAML or the command line set (the rest are the table's defaults)
    cfg.given = sorted(set(from_file) | set(typed))
    return cfg
