"""The one typed configuration: the root :class:`Config` (:mod:`eagrl.config.root`), one module per section, and
the functions that load a profile. Sections import only pydantic, so ``import eagrl.config`` stays light."""
from eagrl.config.root import (
    PROFILES,
    Config,
    DataConfig,
    PipelineConfig,
    TrackingConfig,
    ValidationConfig,
    ZeroShotConfig,
    build_config,
    config_from_json,
    config_from_params,
    default_tracking_uri,
    load_config,
    parse_override,
    profile_path,
    workspace_root,
)

__all__ = ["PROFILES", "Config", "DataConfig", "PipelineConfig", "TrackingConfig", "ValidationConfig",
           "ZeroShotConfig", "build_config", "config_from_json", "default_tracking_uri", "config_from_params",
           "load_config", "parse_override", "profile_path", "workspace_root"]
