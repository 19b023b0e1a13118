"""Promoting model versions with MLflow registry aliases (not the deprecated stages).

The gate: a version whose cross-validated population accuracy (k = 20 distinct cells, the tag
written at registration) is below that of the alias's current holder is refused unless forced.
Every move is recorded on the version as tags (who, when, from which version), so ``lch models``
can tell the history; promoting the previous version back is the rollback.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lch.registry import CHAMPION_ALIAS, POPULATION_METRIC_TAG, REGISTERED_MODEL


class PromotionRefused(RuntimeError):
    """The gate refused a promotion; the message gives both figures."""


@dataclass(frozen=True)
class VersionRow:
    """One registered version as ``lch models`` lists it."""

    version: str
    aliases: tuple[str, ...]
    metric: float | None
    run_id: str | None
    created: str
    cohorts: str


def _metric(version) -> float | None:
    value = version.tags.get(POPULATION_METRIC_TAG)
    return float(value) if value is not None else None


def list_versions(
    name: str = REGISTERED_MODEL, client: MlflowClient | None = None
) -> list[VersionRow]:
    """List every version of ``name``, newest first, with its aliases and held-out metric.

    Empty before the first training run registers the model.
    """
    client = client or MlflowClient()
    if not client.search_registered_models(f"name = '{name}'"):
        return []
    # search_model_versions leaves aliases out; the registered model has them all.
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        created = datetime.fromtimestamp(v.creation_timestamp / 1000, UTC)
        rows.append(
            VersionRow(
                str(v.version), tuple(sorted(aliases.get(str(v.version), []))), _metric(v),
                v.run_id,
                created.isoformat(timespec="seconds"), v.tags.get("cohorts", ""),
            )
        )
    return sorted(rows, key=lambda r: int(r.version), reverse=True)


def _holder(client: MlflowClient, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote(
    version: str | int,
    alias: str = CHAMPION_ALIAS,
    *,
    force: bool = False,
    name: str = REGISTERED_MODEL,
    client: MlflowClient | None = None,
) -> str:
    """Point ``alias`` at ``version`` if it passes the gate; return what was done.

    Raises
    ------
    ValueError
        If the version does not exist.
    PromotionRefused
        If its cross-validated population accuracy is below the current holder's (or unknown while
        the holder's is known) and ``force`` is not set.
    """
    client = client or MlflowClient()
    version = str(version)
    try:
        candidate = client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"registered model {name!r} has no version {version}") from exc
    holder = _holder(client, name, alias)
    if holder is not None and str(holder.version) == version:
        return f"{name} version {version} already holds @{alias}"
    new, old = _metric(candidate), _metric(holder) if holder is not None else None
    if holder is not None and old is not None and not force and (new is None or new < old):
        shown = "unknown" if new is None else f"{new:.3f}"
        raise PromotionRefused(
            f"refusing to promote {name} version {version} to @{alias}: its cross-validated "
            f"population accuracy (k=20) is {shown}, below {old:.3f} of version "
            f"{holder.version}, the current @{alias}; pass --force to promote it anyway"
        )
    client.set_registered_model_alias(name, alias, version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {
        f"promoted_to_{alias}_at": stamp,
        f"promoted_to_{alias}_by": getpass.getuser(),
        f"promoted_to_{alias}_from": str(holder.version) if holder is not None else "none",
        f"promoted_to_{alias}_forced": str(bool(force)).lower(),
    }.items():
        client.set_model_version_tag(name, version, key, value)
    before = f"from version {holder.version}" if holder is not None else "(first holder)"
    return f"{name} @{alias} → version {version} {before}"
