"""A gradual rollout of a challenger: the plan, who gets which variant, and where it lives.

No Dagster import: the registry asset starts a rollout, the API follows it, the
`rollout_evaluation` asset ends it, and the tests share this module.

State lives in the MLflow model registry, nowhere else:
- the alias `canary` points at the version under rollout (in both modes);
- registered-model tags `rollout.*` hold the plan (mode, version, champion at the
  start, start time, the canary share's steps, the hashing salt, status);
- ending a rollout deletes the alias and records the outcome in `rollout.status`,
  `rollout.outcome`, `rollout.ended_at` (and the evidence on the version's tags).

Variants of an answer, as logged and counted: `champion` (the champion answered),
`canary` (the challenger answered a canary share of the traffic), `shadow` (the
challenger scored a copy of the request; logged, never returned).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

CANARY_ALIAS = "canary"
TAG_PREFIX = "rollout."
MODES = ("immediate", "canary", "shadow")
CHAMPION, CANARY, SHADOW = "champion", "canary", "shadow"
VARIANTS = (CHAMPION, CANARY, SHADOW)
ACTIVE = "active"
# The header a client sends to keep its variant across requests (any stable id: a
# user, a session, a device). Without it each request is assigned on its own.
CLIENT_KEY_HEADER = "X-Client-Key"


class RolloutError(RuntimeError):
    """A rollout operation that cannot be done; the message says why."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class RolloutPlan:
    """One rollout: `version` (the challenger) against `champion_version`.

    `steps`: (seconds after `started_at`, canary share) pairs, offsets increasing, the
    first at 0; the share in force is the last step reached (shadow ignores shares:
    every request is copied)."""

    mode: str
    version: str
    champion_version: str
    started_at: datetime
    steps: tuple[tuple[float, float], ...] = ((0.0, 0.1),)
    salt: str = ""
    status: str = ACTIVE

    def __post_init__(self) -> None:
        if self.mode not in (CANARY, SHADOW):
            raise ValueError(f"rollout mode {self.mode!r}: expected canary or shadow")
        if not self.steps:
            raise ValueError("a rollout needs at least one (offset, share) step")
        offsets = [offset for offset, _ in self.steps]
        if offsets[0] != 0 or offsets != sorted(offsets):
            raise ValueError(f"rollout step offsets must start at 0 and increase: {offsets}")
        for _, share in self.steps:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"canary share {share} is outside [0, 1]")

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def share_at(self, when: datetime | None = None) -> float:
        """The canary share in force at `when` (now by default); 0 for shadow (the
        challenger answers no client)."""
        if self.mode == SHADOW:
            return 0.0
        elapsed = ((when or _now()) - self.started_at).total_seconds()
        share = self.steps[0][1]
        for offset, step_share in self.steps:
            if elapsed >= offset:
                share = step_share
        return share

    def elapsed_seconds(self, when: datetime | None = None) -> float:
        return max(0.0, ((when or _now()) - self.started_at).total_seconds())

    def as_tags(self) -> dict[str, str]:
        return {f"{TAG_PREFIX}mode": self.mode, f"{TAG_PREFIX}version": self.version,
                f"{TAG_PREFIX}champion_version": self.champion_version,
                f"{TAG_PREFIX}started_at": self.started_at.isoformat(),
                f"{TAG_PREFIX}steps": json.dumps([list(step) for step in self.steps]),
                f"{TAG_PREFIX}salt": self.salt, f"{TAG_PREFIX}status": self.status}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> RolloutPlan | None:
        """The plan the tags describe; None when they hold none (or not a whole one)."""
        try:
            return cls(mode=tags[f"{TAG_PREFIX}mode"], version=tags[f"{TAG_PREFIX}version"],
                       champion_version=tags[f"{TAG_PREFIX}champion_version"],
                       started_at=datetime.fromisoformat(tags[f"{TAG_PREFIX}started_at"]),
                       steps=tuple((float(o), float(s)) for o, s in
                                   json.loads(tags[f"{TAG_PREFIX}steps"])),
                       salt=tags.get(f"{TAG_PREFIX}salt", ""),
                       status=tags.get(f"{TAG_PREFIX}status", ACTIVE))
        except (KeyError, ValueError, TypeError):
            return None


def step_schedule(initial_share: float, step_shares: Sequence[float] = (),
                  step_minutes: float = 60.0) -> tuple[tuple[float, float], ...]:
    """`initial_share` from the start, then each of `step_shares` `step_minutes` after the
    previous step: ((0, 0.1), (3600, 0.3), (7200, 0.5))."""
    if step_shares and step_minutes <= 0:
        raise ValueError(f"canary step minutes must be > 0, got {step_minutes}")
    steps = [(0.0, float(initial_share))]
    for i, share in enumerate(step_shares, start=1):
        steps.append((i * step_minutes * 60.0, float(share)))
    return tuple(steps)


def key_fraction(key: str, salt: str) -> float:
    """A stable number in [0, 1) for a client key (blake2b of salt and key): the same
    key always lands at the same place in one rollout; a new rollout (new salt)
    reshuffles."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def serves_canary(key: str, salt: str, share: float) -> bool:
    """Whether the client (or request) with `key` is answered by the canary."""
    return share > 0.0 and key_fraction(key, salt) < share


@dataclass(frozen=True)
class Rollout:
    """The registry's rollout state: the plan and where the alias points (None: none)."""

    plan: RolloutPlan | None
    alias_version: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """A rollout runs when the plan is active and the alias is on its version."""
        return (self.plan is not None and self.plan.active
                and self.alias_version == self.plan.version)


def read_rollout(client: MlflowClient, name: str) -> Rollout:
    """The rollout state of registered model `name` (MlflowException when the registry
    cannot be reached; a model that does not exist has no rollout)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return Rollout(None, None)
        raise
    tags = {k: v for k, v in (model.tags or {}).items() if k.startswith(TAG_PREFIX)}
    aliases = getattr(model, "aliases", None) or {}
    alias_version = aliases.get(CANARY_ALIAS) if isinstance(aliases, dict) else None
    return Rollout(RolloutPlan.from_tags(tags), str(alias_version) if alias_version else None,
                   tags)


def start_rollout(client: MlflowClient, name: str, mode: str, version: str,
                  champion_version: str, steps: tuple[tuple[float, float], ...],
                  started_at: datetime | None = None) -> RolloutPlan:
    """Put `version` in `mode` against `champion_version`: the plan's tags first, then
    the alias (so an API that sees the alias always finds the plan). Replaces a
    rollout in progress (its challenger simply stops getting traffic)."""
    if str(version) == str(champion_version):
        raise RolloutError(f"version {version} is already the champion of {name}")
    plan = RolloutPlan(mode, str(version), str(champion_version), started_at or _now(),
                       steps, secrets.token_hex(8))
    for key, value in plan.as_tags().items():
        client.set_registered_model_tag(name, key, value)
    for key in ("outcome", "ended_at", "reason"):
        try:
            client.delete_registered_model_tag(name, f"{TAG_PREFIX}{key}")
        except MlflowException:
            pass
    client.set_registered_model_alias(name, CANARY_ALIAS, str(version))
    client.set_model_version_tag(name, str(version), f"{TAG_PREFIX}started_at",
                                 plan.started_at.isoformat())
    client.set_model_version_tag(name, str(version), f"{TAG_PREFIX}mode", mode)
    return plan


def end_rollout(client: MlflowClient, name: str, plan: RolloutPlan, outcome: str,
                reason: str, evidence: dict[str, str] | None = None) -> None:
    """Finish `plan`: the alias goes first (the API stops sending traffic to the
    challenger), then the outcome ("promoted", "rolled_back", "replaced") and the
    evidence are recorded on the model's and the version's tags."""
    try:
        client.delete_registered_model_alias(name, CANARY_ALIAS)
    except MlflowException:
        pass  # already gone
    at = _now().isoformat(timespec="seconds")
    for key, value in {"status": outcome, "outcome": outcome, "ended_at": at,
                       "reason": reason}.items():
        client.set_registered_model_tag(name, f"{TAG_PREFIX}{key}", value[:5000])
    for key, value in {"decision": outcome, "reason": reason, "ended_at": at,
                       **(evidence or {})}.items():
        client.set_model_version_tag(name, plan.version, f"{TAG_PREFIX}{key}", value[:5000])
