"""The model a replica answers with: ``models:/lch-aae@<alias>``, followed as the alias moves.

Each replica polls the registry every ``poll_interval_s``; when the alias points to another
version, the new model is loaded off the request path and swapped in with one assignment, so a
request in flight finishes on the model it started with and none is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from lch.model import LCHModel
from lch.registry import REGISTERED_MODEL, load_lch_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version in memory, with its run id and version tags."""

    version: str
    model: LCHModel
    run_id: str | None
    tags: dict[str, str]


class ModelSource:
    """The loaded version of ``models:/<name>@<alias>`` (see the module docstring)."""

    def __init__(self, alias: str, tracking_uri: str | None, name: str = REGISTERED_MODEL) -> None:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.name, self.alias = name, alias
        self.client = MlflowClient()
        self.current = self._load(self._resolve())

    def _resolve(self):
        return self.client.get_model_version_by_alias(self.name, self.alias)

    def load_version(self, version: str) -> LoadedModel:
        """Another registered version of the same model (a request naming one)."""
        return self._load(self.client.get_model_version(self.name, version))

    def _load(self, version) -> LoadedModel:
        model = load_lch_model(f"models:/{self.name}/{version.version}").eval()
        return LoadedModel(str(version.version), model, version.run_id, dict(version.tags))

    def refresh(self) -> bool:
        """Load the alias's version if it moved; return True if the model changed."""
        version = self._resolve()
        if str(version.version) == self.current.version:
            return False
        self.current = self._load(version)
        logger.info("%s@%s now answers with version %s", self.name, self.alias, version.version)
        return True

    async def follow(self, poll_interval_s: float) -> None:
        """Refresh forever (a replica's background task); a failed poll is retried later."""
        while True:
            await asyncio.sleep(poll_interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # the registry being briefly unreachable must not kill the replica
                logger.exception("could not refresh %s@%s", self.name, self.alias)
