"""The registered model's name and aliases, importable without MLflow or torch.

One home for them: the command line's defaults and help use them.
"""

from __future__ import annotations

REGISTERED_MODEL = "lch-aae"
CHAMPION_ALIAS = "champion"
"""The alias the promotion gate moves and Serve loads: ``models:/lch-aae@champion``."""


def model_uri(alias: str = CHAMPION_ALIAS) -> str:
    """``models:/<REGISTERED_MODEL>@<alias>``."""
    return f"models:/{REGISTERED_MODEL}@{alias}"


def version_uri(version: str | int) -> str:
    """``models:/<REGISTERED_MODEL>/<version>``."""
    return f"models:/{REGISTERED_MODEL}/{version}"
