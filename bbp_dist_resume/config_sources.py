"""Where ``CheckpointConfig.load`` reads field values from, besides its arguments: a TOML
file and the ``BBP_<FIELD>`` environment variables.

Both return the raw values by field name; ``CheckpointConfig`` validates them. A source
that cannot be read, or names a field that does not exist, raises ``ConfigError``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from bbp_dist_resume.errors import ConfigError

_ENV_PREFIX = "BBP_"
# BBP_ variables that are not config fields (read by the CLI and the test fixtures).
_ENV_NOT_FIELDS = frozenset({"BBP_CONFIG", "BBP_DEBUG", "BBP_LOG_FORMAT", "BBP_FAULT"})
_ENV_IGNORED_PREFIXES = ("BBP_TEST_",)


def read_toml(path: Path) -> dict[str, Any]:
    """The field values of a TOML file: its top-level keys, or its ``[checkpoint]`` table.

    Args:
        path: the TOML file.

    Returns:
        The values by field name, unvalidated.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or ``checkpoint`` is no table.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("config file", f"cannot read {str(path)!r}: {exc.strerror}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([("config file", f"{str(path)!r} is not valid TOML: {exc}")]) from None
    table = data.get("checkpoint", data)
    if not isinstance(table, dict):
        raise ConfigError([("config file", "[checkpoint] must be a table")])
    return table


def read_env(env: Mapping[str, str], fields: Collection[str]) -> dict[str, Any]:
    """The field values of the ``BBP_<FIELD>`` variables in ``env``.

    Args:
        env: the environment (name to value).
        fields: the names of the config fields.

    Returns:
        The values by field name, unvalidated; comma-separated lists split into tuples.

    Raises:
        ConfigError: naming every ``BBP_`` variable that is not a field.
    """
    out: dict[str, Any] = {}
    unknown: list[tuple[str, str]] = []
    for name, value in env.items():
        if not name.startswith(_ENV_PREFIX) or name in _ENV_NOT_FIELDS:
            continue
        if name.startswith(_ENV_IGNORED_PREFIXES):
            continue
        field = name[len(_ENV_PREFIX) :].lower()
        if field not in fields:
            unknown.append((name, "not a configuration field"))
        elif field in ("decryption_keys", "deterministic_producers"):
            out[field] = tuple(v for v in value.split(",") if v)
        else:
            out[field] = value
    if unknown:
        raise ConfigError(unknown)
    return out
