"""The one typed settings object, built from ``FIELDLINK_*`` environment variables.

Values come, highest priority first, from the environment, then from an optional TOML file
named by ``FIELDLINK_CONFIG_FILE``, then from the embedded defaults (SQLite under ``var/``,
local-memory cache, a local CA). ``mode = "production"`` refuses insecure values at start.
"""

from fieldlink.settings.model import (
    DEV_SECRET_KEY_FILE,
    FieldlinkSettings,
    InsecureSettingsError,
    load_settings,
)

__all__ = ["DEV_SECRET_KEY_FILE", "FieldlinkSettings", "InsecureSettingsError", "load_settings"]
