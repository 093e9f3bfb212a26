"""The config layer: the key table, YAML files and flags. Above data, optim and engine (which
take the parsed values) and below the entry points."""
from .keys import KEYS, GROUPS, str2bool
from .parse import check_training, check_values, configs_dir, create_parser, find_config, \
    load_yaml, parse_config

__all__ = ['KEYS', 'GROUPS', 'str2bool', 'check_training', 'check_values', 'configs_dir',
           'create_parser', 'find_config', 'load_yaml', 'parse_config']
