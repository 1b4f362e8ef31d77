"""failsoft: a resilient serving gateway and control plane for ML models."""

from failsoft.config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "__version__", "load_config"]
