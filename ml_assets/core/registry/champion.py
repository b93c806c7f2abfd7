"""MLflow model registry operations: register, read the champion, promote, roll back.

No Dagster import: the assets, the CLI's `rollback` and the tests share these.
The champion is the `champion` alias; the promotion history is a registered-model
tag (`champion.history`, newest last), so a rollback is one alias move.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion.history"
HISTORY_LIMIT = 50


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user in some containers
        return "unknown"


def register_version(client: MlflowClient, name: str, model_uri: str, run_id: str,
                     model_id: str | None, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name`, once: a re-execution that
    registers the same logged model finds and returns the existing version."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="Served by the prediction API "
                                           "as models:/<name>@champion.")
        except MlflowException:  # created concurrently
            pass
    if model_id:
        existing = client.search_model_versions(f"name = '{name}' and tags.model_id = "
                                                f"'{model_id}'")
        if existing:
            return existing[0]
    all_tags = {**tags, **({"model_id": model_id} if model_id else {})}
    return client.create_model_version(name, source=model_uri, run_id=run_id, tags=all_tags,
                                       model_id=model_id)


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def history(client: MlflowClient, name: str) -> list[str]:
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


@dataclass(frozen=True)
class ChampionChange:
    name: str
    version: str
    previous: str | None
    action: str
    at: str
    by: str


def promote(client: MlflowClient, name: str, version: str, expected_current: str | None,
            record: dict[str, str]) -> ChampionChange:
    """Point `champion` at `version`. Refuses if the champion moved since the decision
    was made (`expected_current`), so two concurrent promotions cannot both win."""
    current = alias_version(client, name, CHAMPION)
    current_version = current.version if current else None
    if str(current_version) != str(expected_current):
        raise RegistryError(f"champion of {name} moved from {expected_current} to "
                            f"{current_version} since the comparison; re-run the comparison")
    at, by = now_utc(), who()
    client.set_registered_model_alias(name, CHAMPION, version)
    entries = (history(client, name) + [str(version)])[-HISTORY_LIMIT:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries))
    for key, value in {**record, "promotion.at": at, "promotion.by": by,
                       "promotion.previous_champion": str(current_version)}.items():
        client.set_model_version_tag(name, version, key, value)
    return ChampionChange(name, str(version), current_version, "promoted", at, by)


def rollback(client: MlflowClient, name: str, to_version: str | None = None,
             reason: str = "manual rollback",
             check: Callable[[str], object] | None = None) -> ChampionChange:
    """Restore the previous champion (or `to_version`) in one step; recorded in tags.
    `check(version)` runs before the alias moves (e.g. the safe loader's inspection);
    when it raises, nothing changes and RegistryError names why."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from")
    entries = past = history(client, name)
    if to_version is None:
        earlier = [v for v in entries if v != str(current.version)]
        if entries and entries[-1] == str(current.version):
            earlier = entries[:-1]
        if not earlier:
            raise RegistryError(f"{name} has no earlier champion than version "
                                f"{current.version}")
        to_version = earlier[-1]
        entries = earlier
    else:
        to_version = str(to_version)
        if to_version == str(current.version):
            raise RegistryError(f"{name} version {to_version} is already the champion; "
                                "nothing to roll back")
        try:
            client.get_model_version(name, to_version)
        except MlflowException:
            raise RegistryError(f"{name} has no version {to_version}") from None
        # Back to an earlier champion: the history returns to that point (no duplicate);
        # a version that never was champion is appended.
        entries = (entries[:len(entries) - entries[::-1].index(to_version)]
                   if to_version in entries else entries + [to_version])
    restored = to_version in past
    if check is not None:
        try:
            check(str(to_version))
        except Exception as exc:  # noqa: BLE001 - any refusal keeps the champion
            raise RegistryError(f"{name} version {to_version} cannot be restored: "
                                f"{exc}") from exc
    at, by = now_utc(), who()
    client.set_registered_model_alias(name, CHAMPION, str(to_version))
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(entries[-HISTORY_LIMIT:]))
    client.set_model_version_tag(name, str(current.version), "rollback.from_at", at)
    client.set_model_version_tag(name, str(to_version), "rollback.restored_at", at)
    client.set_model_version_tag(name, str(to_version), "rollback.by", by)
    client.set_model_version_tag(name, str(to_version), "rollback.reason", reason)
    return ChampionChange(name, str(to_version), str(current.version),
                          "rolled back" if restored else "set by hand", at, by)
