"""The config tree: one dataclass per section, every field documented.

A recipe is a TOML file whose tables are the sections below. Any field can be overridden as
``--section.key=value`` on the command line; values are converted to the field's type. Unknown
keys and bad values raise :class:`~lmlab.errors.ConfigError` naming the key. The resolved
config is written beside every output (``config.toml``) and later stages rebuild from it.

``sections`` holds the dataclasses and their checks, ``load`` the TOML reading and writing;
every name is importable from ``lmlab.config``.
"""

from lmlab.config.load import (
    apply_overrides,
    builtin_recipes,
    describe_fields,
    find_recipe,
    from_dict,
    load_config,
    save_config,
    to_dict,
    to_toml,
)
from lmlab.config.sections import (
    PHASE_INHERITED,
    Config,
    DataConfig,
    EncDecConfig,
    EvalConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    PrepareConfig,
    SampleConfig,
    SftConfig,
    TokenizerConfig,
    TrainConfig,
    check_model,
    check_section,
    opt,
    resolve_vocab_size,
)
from lmlab.errors import ConfigError  # raised by every check here; importable from here as before

__all__ = [
    "PHASE_INHERITED",
    "Config",
    "ConfigError",
    "DataConfig",
    "EncDecConfig",
    "EvalConfig",
    "LogConfig",
    "ModelConfig",
    "OptimConfig",
    "PhaseConfig",
    "PrepareConfig",
    "SampleConfig",
    "SftConfig",
    "TokenizerConfig",
    "TrainConfig",
    "apply_overrides",
    "builtin_recipes",
    "check_model",
    "check_section",
    "describe_fields",
    "find_recipe",
    "from_dict",
    "load_config",
    "opt",
    "resolve_vocab_size",
    "save_config",
    "to_dict",
    "to_toml",
]
