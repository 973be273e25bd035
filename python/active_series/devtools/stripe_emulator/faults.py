"""Injected faults: rules for the next requests, and a seeded random mix."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .common import Json


@dataclass
class FaultRule:
    kind: str
    remaining: int
    path_prefix: str | None = None
    method: str | None = None
    status: int = 500
    seconds: float = 0.0
    id: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        return not (self.path_prefix and not path.startswith(self.path_prefix))

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "kind": self.kind,
            "remaining": self.remaining,
            "path_prefix": self.path_prefix,
            "method": self.method,
            "status": self.status,
            "seconds": self.seconds,
        }


@dataclass
class RandomFaults:
    ratio: float
    seed: int
    kinds: dict[str, float]
    timeout_seconds: float
    path_prefix: str | None
    rng: random.Random = field(repr=False, default_factory=random.Random)

    def as_json(self) -> Json:
        return {
            "ratio": self.ratio,
            "seed": self.seed,
            "kinds": self.kinds,
            "timeout_seconds": self.timeout_seconds,
            "path_prefix": self.path_prefix,
        }


@dataclass
class Fault:
    """The fault chosen for one request."""

    kind: str
    status: int = 500
    seconds: float = 0.0
