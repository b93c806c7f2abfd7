"""Where the prediction log lives: a PostgreSQL URL or an SQLite file, read from one
setting, and URLs shown with their password hidden. Shared by the package's entry point
(`open_prediction_log`) and the PostgreSQL backend, so neither imports the other."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

_POSTGRES_SCHEMES = ("postgresql", "postgres")


def resolve_log_location(url_or_path: str | Path) -> tuple[str, str | Path]:
    """("postgres", libpq URL) or ("sqlite", path) for a URL or a plain path; ValueError
    (naming the value, password hidden) for anything else."""
    if isinstance(url_or_path, Path):
        return "sqlite", url_or_path
    value = str(url_or_path).strip()
    if not value:
        raise ValueError("empty prediction log location: give a postgresql:// URL, a "
                         "sqlite:/// URL or a file path")
    if "://" not in value:
        return "sqlite", Path(value)
    scheme, _, rest = value.partition("://")
    base, plus, driver = scheme.lower().partition("+")
    if base in _POSTGRES_SCHEMES and (driver or not plus):
        return "postgres", f"postgresql://{rest}"  # libpq knows no "+driver"
    if base == "sqlite" and not plus and rest.startswith("/") and rest.strip("/"):
        return "sqlite", Path(rest[1:])  # SQLAlchemy's form: sqlite:////absolute/path
    raise ValueError(f"unsupported prediction log location {redact_url(value)!r}: use "
                     "postgresql://user:password@host:port/database, sqlite:///path/to/"
                     "log.db or a file path")


def redact_url(url: str) -> str:
    """`url` with its password (in the user part or a password= parameter) as ***."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return re.sub(r"//[^/@]*@", "//***@", url)
    if password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostport}")
    return re.sub(r"(?i)\bpassword=[^&]*", "password=***", urlunsplit(parts))
