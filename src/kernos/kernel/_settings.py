"""Settings, read once from the environment (``KERNOS_*``) and passed down."""

from __future__ import annotations

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from kernos.errors import ConfigError
from kernos.store import DEFAULT_MAX_PAYLOAD, DEFAULT_URL


class Settings(BaseSettings):
    """Every knob kernos reads from the environment.

    ``KERNOS_DATABASE_URL`` picks the store (SQLite file by default); ``KERNOS_APP`` the module
    that defines the agents; the rest tune workers.
    """

    model_config = SettingsConfigDict(env_prefix="KERNOS_", frozen=True, extra="ignore")

    database_url: str = DEFAULT_URL
    app: str | None = None
    concurrency: int = Field(default=100, ge=1)
    lease_ttl: float = Field(default=15.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    grace: float = Field(default=30.0, ge=0)
    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD, ge=1024)
    db_io_timeout: float | None = Field(default=None, gt=0)
    #: seconds a starting worker waits for an unreachable database before it gives up (exit 3)
    startup_wait: float = Field(default=60.0, ge=0)
    fault: str | None = None


def load_settings() -> Settings:
    """Read the settings, turning a bad variable into a ``ConfigError`` that names it."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"KERNOS_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"bad kernos setting in the environment: {problems}") from None
