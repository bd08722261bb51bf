"""JsonConfig: the JSON round trip shared by the package's config dataclasses.

A config dataclass that inherits ``JsonConfig`` gets ``to_dict`` (``dataclasses.asdict``),
``to_json`` (that dict, indented) and ``from_dict``, the inverse: it rejects anything but a
dict and any key that is not a field, each with one line naming the config
(``config_name``), and passes the rest to the constructor, whose own checks
(``__post_init__``) apply as usual. Fields named in ``runtime_fields`` (state of the running
process, e.g. a model's device) are neither written nor accepted.

It lives in ``training`` because imports flow one way (interp -> probes -> training) and
configs of every package use it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for a ``@dataclass`` config: to_dict, to_json and from_dict (module docstring).

    config_name: how messages name the config ("train config": "unknown train config keys
    [...]; allowed: [...]"). runtime_fields: fields left out of the dict and refused by
    from_dict."""

    config_name: ClassVar[str] = "config"
    runtime_fields: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def config_keys(cls) -> list[str]:
        """The keys ``to_dict`` writes and ``from_dict`` accepts, sorted."""
        return sorted(f.name for f in dataclasses.fields(cls) if f.name not in cls.runtime_fields)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for name in self.runtime_fields:
            d.pop(name)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        if not isinstance(d, dict):
            raise ValueError(f"a {cls.config_name} must be a JSON object, got {type(d).__name__}")
        allowed = cls.config_keys()
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {cls.config_name} keys {unknown}; allowed: {allowed}")
        return cls(**d)
