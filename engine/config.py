"""Configuration: ``flowrunner.toml`` in the project directory, then ``FLOWRUNNER_*`` variables.

The environment wins over the file. The project directory holds ``flows/``,
``personas/`` and ``code_steps/`` and is the first code root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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

    code_roots: str = Field(
        default="", description="Extra code roots, separated like PATH (os.pathsep)."
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
    """Where flows, personas and code live."""

    root: Path
    extra_code_roots: tuple[Path, ...] = ()

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
        return cls(root, extra)
