"""The service's settings: flags, then `SESSIONARY_*` environment variables, then the TOML file.

    store = "redis://localhost:6379/0"
    port = 8000
    encryption_keys = ["k2:base64 of 32 random bytes", "k1:the previous one"]  # optional
    api_keys = ["a-long-random-key", { key = "another", namespaces = ["web"] }]

    [namespaces.web]
    idle_ttl = "30m"
    absolute_ttl = "12h"
    max_absolute_ttl = "30d"   # the longest a "remember me" session may ask; default: no bound
    max_sessions_per_subject = 3       # optional, default no limit (docs/account-security.md)
    on_max_sessions = "evict_oldest"   # or "refuse" (the default): 409 too_many_sessions

    [playground]
    session_limit = 50
    ip_algorithm = "gcra"          # per layer: "fixed" (default), "sliding" or "gcra"
    trusted_proxies = ["10.0.0.0/8"]

    [analytics.projects.shop]
    key = "a-long-random-project-key"

Nested keys come from the environment with a double underscore:
`SESSIONARY_PLAYGROUND__SESSION_LIMIT=20`; lists and tables as JSON, but the keys are
comma-separated too: `SESSIONARY_API_KEYS=key-one,key-two` (or `'["key-one"]'`) and
`SESSIONARY_ENCRYPTION_KEYS=k2:base64,k1:base64`.
An unknown key anywhere, or a bad value, is an error naming the key and what was expected; a
TOML syntax error names the file, line and column. A secret (a key) is never echoed in an
error: a wrong one is described by its length.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from sessionary.analytics.settings import AnalyticsSettings
from sessionary.http.settings import STRICT, Duration
from sessionary.playground.settings import PlaygroundSettings
from sessionary.runs.settings import RunsSettings
from sessionary.sealing import parse_keys
from sessionary.store import DEFAULT_MAX_PAYLOAD, DEFAULT_URL, without_password
from sessionary.web.log_format import LogFormat

ENV_PREFIX = "SESSIONARY_"


class SettingsError(ValueError):
    """The settings are wrong; the message lists every problem, one per line."""


class NamespaceSettings(BaseModel):
    model_config = STRICT

    idle_ttl: Duration | None = timedelta(minutes=30)
    absolute_ttl: Duration | None = timedelta(hours=12)
    #: the longest lifetime one session may ask for itself ("remember me"); None: no bound
    max_absolute_ttl: Duration | None = None
    #: the most live sessions one subject may hold here (None: no limit); a session gaining
    #: a subject past it is refused (409) or evicts the least recently active (see
    #: docs/account-security.md)
    max_sessions_per_subject: int | None = Field(None, ge=1)
    on_max_sessions: Literal["refuse", "evict_oldest"] = "refuse"
    id_prefix: str = ""
    on_unavailable: Literal["fail_closed", "fail_open"] = "fail_closed"
    max_payload: int = Field(DEFAULT_MAX_PAYLOAD, ge=1)

    @model_validator(mode="after")
    def _bounded(self) -> NamespaceSettings:
        """The bound holds for the policy too: a settings error, not a failure at start."""
        bound, absolute = self.max_absolute_ttl, self.absolute_ttl
        if bound is not None and absolute is not None and absolute > bound:
            raise ValueError("absolute_ttl is above max_absolute_ttl")
        return self


class ApiKey(BaseModel):
    """An admin API key, allowed on `namespaces` ("*": all of them)."""

    model_config = STRICT

    key: SecretStr = Field(min_length=16)
    namespaces: list[str] = Field(default_factory=lambda: ["*"])

    def allows(self, namespace: str) -> bool:
        return "*" in self.namespaces or namespace in self.namespaces


class ReaperSettings(BaseModel):
    """The reaper `sessionary serve` runs in the background (or `sessionary reap` alone)."""

    model_config = STRICT

    enabled: bool = True
    every: Duration = timedelta(seconds=30)
    batch: int = Field(1000, ge=1)


class ConsoleSettings(BaseModel):
    """The console at /console (`sessionary.web.console`): signed in with an admin API key,
    which opens a session of its own in the store, with these lifetimes."""

    model_config = STRICT

    enabled: bool = True
    idle_ttl: Duration = timedelta(minutes=30)
    absolute_ttl: Duration = timedelta(hours=12)
    #: "auto": the cookie is Secure on requests that came over https (a local http origin
    #: works too); "always": Secure everywhere (the browser then keeps it from plain http)
    secure_cookie: Literal["auto", "always"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    #: the TOML file a load reads (set by `load_settings` on the class it builds)
    toml_path: ClassVar[Path | None] = None

    store: str = DEFAULT_URL
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    #: serving processes on the port (`serve --workers`): a number, or "auto", one per core
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    api_keys: Annotated[list[ApiKey], NoDecode] = Field(default_factory=list)
    namespaces: dict[str, NamespaceSettings] = Field(
        default_factory=lambda: {"web": NamespaceSettings()}
    )
    playground: PlaygroundSettings = Field(default_factory=PlaygroundSettings)
    runs: RunsSettings = Field(default_factory=RunsSettings)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    reaper: ReaperSettings = Field(default_factory=ReaperSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    #: the largest request body accepted, in bytes
    max_body: int = Field(2 * 1024 * 1024, ge=1024)
    #: request heads: the largest header (name and value), the largest head (request line and
    #: headers), the most headers; past any, 431 and the connection is closed
    max_header_bytes: int = Field(8 * 1024, ge=1024)
    max_head_bytes: int = Field(64 * 1024, ge=4096)
    max_headers: int = Field(100, ge=16)
    #: each connection's kernel send buffer, in bytes (0: the kernel's own, autotuned): what a
    #: client that stops reading can hold of the machine's memory
    send_buffer_bytes: int = Field(128 * 1024, ge=0)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    #: "json": every log line of serve, worker and reap a JSON object (web/log_format.py)
    log_format: LogFormat = "text"
    #: encryption at rest (docs/encryption.md): keys of 32 random bytes in base64, each
    #: optionally "id:"-prefixed; the first seals, all open. Empty: sessions stored in clear
    encryption_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """`SESSIONARY_ENCRYPTION_KEYS=k2:...,k1:...`: a comma-separated list (or JSON)."""
        if isinstance(value, str):
            return _json_or_comma_separated(value)
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _valid_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        """Checked at load, naming the key by its position and size, never its text."""
        parse_keys([key.get_secret_value() for key in keys])
        return keys

    def encryption(self) -> list[str]:
        """The encryption keys' text, for `connect(encryption_keys=...)`."""
        return [key.get_secret_value() for key in self.encryption_keys]

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_may_be_plain_strings(cls, value: Any) -> Any:
        """A key alone stands for a key allowed everywhere; from the environment, the list is
        JSON (`'["k1", {"key": "k2", "namespaces": ["web"]}]'`) or, as an operator first
        writes it, comma-separated (`k1,k2`)."""
        if isinstance(value, str):
            value = _json_or_comma_separated(value)
        if isinstance(value, list):
            return [{"key": item} if isinstance(item, str) else item for item in value]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        if cls.toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls.toml_path))
        return tuple(sources)


def _json_or_comma_separated(text: str) -> Any:
    """A list from the environment: JSON when it looks like JSON, else comma-separated."""
    if text.lstrip().startswith("["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValueError("starts like a JSON list but is not valid JSON") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def load_settings(config: str | Path | None = None, **flags: Any) -> Settings:
    """Settings from `flags` (None means "not given"), the environment and the TOML file."""
    problems = [
        f"{name}: unknown setting (known: {', '.join(sorted(Settings.model_fields))})"
        for name in os.environ
        if name.startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].split("__")[0].lower() not in Settings.model_fields
    ]
    path = None if config is None else Path(config)
    if path is not None and not path.is_file():
        problems.append(f"--config {path}: no such file")
    if problems:
        raise SettingsError("\n".join(problems))
    given = {key: value for key, value in flags.items() if value is not None}
    reading = type("Settings", (Settings,), {"toml_path": path})  # the file this load reads
    try:
        loaded: Settings = reading(**given)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"--config {path}: {_toml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"--config {path}: cannot read it as UTF-8 TOML: {exc}") from None
    except SourceError as exc:  # an environment variable that is not the JSON it must be
        raise SettingsError(_describe_source(exc)) from None
    return loaded


def _toml_problem(error: tomllib.TOMLDecodeError) -> str:
    """The position first, as an editor wants it ("line 2, column 11: Illegal character");
    Python 3.11's error carries it only in its text."""
    text = str(error)
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text, re.DOTALL)
    if found is None:
        return f"{text} (not valid TOML)"
    what, line, column = found.groups()
    return f"line {line}, column {column}: {what} (not valid TOML)"


def _describe_source(error: SourceError) -> str:
    found = re.search(r'field "([^"]+)"', str(error))
    if found is None:
        return str(error)
    variable = ENV_PREFIX + found.group(1).upper()
    return f"{variable}: not valid JSON (a table or a list from the environment is JSON)"


#: the settings whose values are secrets (at any depth): never echoed in an error
_SECRETS = frozenset({"key", "api_keys", "encryption_keys", "ip_hash_secret"})


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"])
        found = problem.get("input")
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown setting")
        elif _SECRETS.intersection(str(part) for part in problem["loc"]):
            lines.append(f"{key}: {_secret_problem(problem)}")
        elif isinstance(found, str):
            lines.append(f"{key}: {problem['msg']} (got {_fit_to_show(found)})")
        elif isinstance(found, dict | list):  # may hold a key
            lines.append(f"{key}: {problem['msg']} (got a {type(found).__name__})")
        else:
            lines.append(f"{key}: {problem['msg']} (got {found!r})")
    return "\n".join(lines)


def _fit_to_show(text: str) -> str:
    """`text` quoted, a URL's password out of it (out of logs and terminals)."""
    try:
        return repr(without_password(text))
    except ValueError:  # not even a URL's shape: it may still hold one's password
        return f"a text of {len(text)} characters"


def _secret_problem(problem: ErrorDetails) -> str:
    """What is wrong with a secret, by its length, never its text."""
    found, shortest = problem.get("input"), problem.get("ctx", {}).get("min_length")
    if problem["type"] == "too_short" and isinstance(found, str):
        return (
            f"this key has {len(found)} characters, a key needs at least {shortest}: make one "
            "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return problem["msg"]
