"""failsoft: a resilient serving gateway and control plane for ML models."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "__version__", "load_config"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a leaf such as the V2 codec does not load the whole pipeline.
    if name in ("Config", "ConfigError", "load_config"):
        from failsoft import config

        return getattr(config, name)
    raise AttributeError(f"module 'failsoft' has no attribute {name!r}")
