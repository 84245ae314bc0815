"""Typed run configs: the sections (sections.py), their checks (checks.py) and the one loader
(loader.py) that the command line, recipes, Tune trials and scaling points all go through."""

from raylpclip.config.checks import ConfigError, check_name, choice, require, validate
from raylpclip.config.loader import (apply_overrides, config_args, flatten, from_dict, load_config, read_yaml,
                                     save_config, to_dict)
from raylpclip.config.sections import (DECODE_BATCH_BYTES, DataConfig, EvalConfig, ExportConfig, LossConfig, ModelConfig,
                                       OptimConfig, PretrainConfig, PSDConfig, RayConfig, RunConfig, S3Config,
                                       SourceConfig, TrainConfig)
from raylpclip.config.inference_sections import InferenceConfig, RobustnessConfig, ViewsConfig

__all__ = [
    "ConfigError", "check_name", "choice", "require", "validate",
    "apply_overrides", "config_args", "flatten", "from_dict", "load_config", "read_yaml", "save_config", "to_dict",
    "DECODE_BATCH_BYTES", "DataConfig", "EvalConfig", "ExportConfig", "InferenceConfig", "LossConfig", "ModelConfig",
    "OptimConfig", "PretrainConfig", "PSDConfig", "RayConfig", "RobustnessConfig", "RunConfig", "S3Config",
    "SourceConfig", "TrainConfig", "ViewsConfig",
]
