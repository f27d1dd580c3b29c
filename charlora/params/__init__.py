"""The parameter table and Kohya-compatible configs (the single source of truth for settings)."""

from .config import (LoadedConfig, cross_check, dump_kohya, load_config, normalize, parse_assignments,
                     read_config_file, save_config, to_kohya)
from .spec import GROUPS, TIERS, Param
from .table import PARAMS, PARAMS_BY_KEY, defaults, effective, params_in_group

__all__ = [
    "GROUPS", "TIERS", "PARAMS", "PARAMS_BY_KEY", "Param", "LoadedConfig", "defaults", "effective", "params_in_group",
    "normalize", "cross_check", "parse_assignments", "read_config_file", "load_config", "to_kohya",
    "dump_kohya", "save_config",
]
