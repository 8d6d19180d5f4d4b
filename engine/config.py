"""Configuration: ``flowrunner.toml`` in the project directory, then ``FLOWRUNNER_*`` variables.

The environment wins over the file. The project directory holds ``flows/``,
``personas/`` and ``code_steps/`` and is the first code root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    """Every setting, read from the environment (``FLOWRUNNER_<NAME>``) or flowrunner.toml."""

    model_config = SettingsConfigDict(env_prefix="FLOWRUNNER_", extra="forbid")

    database_url: str = Field(
        default="sqlite:///.flowrunner/flowrunner.db",
        description="sqlite:///PATH (relative to the project) or postgresql://...",
    )
    agent_backend: str = Field(default="openai", description="openai, command or scripted.")
    openai_base_url: str = Field(
        default="http://127.0.0.1:11434/v1", description="Chat-completions endpoint root."
    )
    openai_api_key: str | None = Field(default=None, description="Key sent as bearer.")
    openai_max_retry_after: float = Field(
        default=60,
        ge=0,
        description="Seconds one model call waits in all on the endpoint's Retry-After.",
    )
    model: str = Field(default="qwen3", description="Default model of a run.")
    agent_command: str | None = Field(
        default=None, description="argv of the command backend, as shell words."
    )
    agent_env: str = Field(
        default="",
        description="Variables the command backend's agent gets besides the basics "
        "(PATH, HOME, ...): names separated by commas or spaces.",
    )
    scripted_replies: str | None = Field(
        default=None, description="File of canned replies for the scripted backend."
    )
    code_roots: str = Field(
        default="", description="Extra code roots, separated like PATH (os.pathsep)."
    )
    api_token: str | None = Field(default=None, description="Bearer token of the HTTP API.")
    api_tokens_file: str | None = Field(
        default=None, description="JSON file mapping bearer tokens to identities."
    )
    max_agents: int = Field(default=8, ge=1, description="Agent steps running at once per worker.")
    max_code: int = Field(
        default=8, ge=1, description="Code steps and gates handled at once per worker."
    )
    lease_seconds: float = Field(
        default=30, gt=0, description="How long a claim lives without a heartbeat."
    )
    max_crashes: int = Field(
        default=3, ge=1, description="Leases lost while the step ran alone before it fails."
    )
    poll_seconds: float = Field(
        default=0.5, gt=0, description="How often an idle worker looks for work."
    )
    db_pool_size: int = Field(
        default=10, ge=1, description="PostgreSQL: connections per process at most."
    )
    db_statement_timeout: float = Field(
        default=30, gt=0, description="PostgreSQL: seconds one statement may run."
    )
    db_retry_seconds: float = Field(
        default=30,
        ge=0,
        description="PostgreSQL: how long a lost connection is retried (with backoff).",
    )
    max_render_bytes: int = Field(
        default=1_000_000, ge=1000, description="Cap on one rendered template."
    )
    render_timeout: float = Field(
        default=2, gt=0, description="Seconds one template may take to render."
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="serve: bytes a request's head (request line and headers) may take.",
    )
    max_headers: int = Field(default=100, ge=10, description="serve: headers one request may have.")
    session_secret: str | None = Field(
        default=None,
        description="Key that signs the web console's session cookies (default: random per "
        "serve process, so sessions end at a restart).",
    )
    session_hours: float = Field(
        default=12, gt=0, le=24 * 30, description="How long a console sign-in lasts."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))


def load_settings(project_dir: Path) -> Settings:
    """Settings of the project in ``project_dir``: its flowrunner.toml, then the environment."""

    class ProjectSettings(Settings):
        model_config = SettingsConfigDict(toml_file=project_dir / "flowrunner.toml")

    return ProjectSettings()


@dataclass(frozen=True, slots=True)
class Project:
    """Where flows, personas and code live, with the settings read there."""

    root: Path
    extra_code_roots: tuple[Path, ...] = ()
    settings: Settings = field(default_factory=Settings)

    @property
    def flows_dir(self) -> Path:
        return self.root / "flows"

    @property
    def personas_dir(self) -> Path:
        return self.root / "personas"

    @property
    def code_roots(self) -> tuple[Path, ...]:
        return (self.root, *self.extra_code_roots)

    @classmethod
    def open(cls, root: Path | None = None) -> Project:
        """The project in ``root`` (default: the current directory) with its settings."""
        root = (root or Path.cwd()).resolve()
        settings = load_settings(root)
        extra = tuple(
            (root / part).resolve() for part in settings.code_roots.split(os.pathsep) if part
        )
        return cls(root, extra, settings)

    def find_flow(self, reference: str) -> Path:
        """A flow by path, or by name among the project's flows (file stem or `name`).

        The file is not checked here: the validation pipeline refuses one that links
        outside ``flows/`` (see :meth:`links_outside_flows`) before reading it."""
        path = Path(reference)
        if path.suffix in (".yaml", ".yml") or os.path.exists(path):  # no error if too long
            return path
        return self.named_flow(reference) or path

    def links_outside_flows(self, path: Path) -> bool:
        """Whether ``path`` lies in ``flows/`` but resolves outside it: a link to a file
        elsewhere, or a file in a linked folder elsewhere. Such a file is refused unread,
        as a persona outside ``personas/`` is; ``flows/`` may itself be a link."""
        where = os.path.abspath(path)
        if not Path(where).is_relative_to(self.flows_dir):
            return False
        return not Path(os.path.realpath(where)).is_relative_to(os.path.realpath(self.flows_dir))

    def inside_personas(self, path: Path) -> bool:
        """Whether ``path`` resolves inside ``personas/`` (which may itself be a link): a
        persona elsewhere is refused by lint and left out of snapshots."""
        folder = os.path.realpath(self.personas_dir)
        return Path(os.path.realpath(path)).is_relative_to(folder)

    def named_flow(self, name: str) -> Path | None:
        """``flows/NAME.yaml``, else ``flows/NAME.yml``, if it is a file."""
        for suffix in (".yaml", ".yml"):
            candidate = self.flows_dir / f"{name}{suffix}"
            if os.path.isfile(candidate):  # False, not an error, for a name too long
                return candidate
        return None
