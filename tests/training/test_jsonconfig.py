"""Every config dataclass shares one JSON round trip (training.jsonconfig.JsonConfig, issue
#17): to_dict / to_json / from_dict give the config back, and from_dict rejects unknown keys
and anything but a dict with one line naming the config."""

from __future__ import annotations

import json
import re

import pytest

from interp.atlas.measure import AtlasConfig
from interp.compare import ComparisonConfig
from interp.explain import ExplainConfig
from interp.landscape.sample import LandscapeConfig
from interp.measurement import MeasurementSpec
from interp.report import ReportConfig
from interp.timeline import TimelineConfig
from probes.sweeps import ProbeConfig
from training.config import ModelConfig
from training.jsonconfig import JsonConfig
from training.recipe import TrainConfig

# (config class, its name in messages, a field and a non-default value for it)
CONFIGS = [
    (TrainConfig, "train config", "iters", 7),
    (ModelConfig, "model config", "d_model", 12),
    (ProbeConfig, "probe config", "targets", ["x_n"]),
    (ComparisonConfig, "comparison config", "seq_len", 16),
    (ReportConfig, "report config", "n_seqs", 5),
    (LandscapeConfig, "landscape config", "include", ["blocks.*"]),
    (TimelineConfig, "timeline config", "steps", [0, 4]),
    (AtlasConfig, "atlas config", "max_len", 64),
    (ExplainConfig, "explain config", "corruptions", ["flip"]),
    (MeasurementSpec, "measurement spec", "flip_seqs", 32),
]
IDS = [c[0].__name__ for c in CONFIGS]


def subclasses(cls: type) -> set[type]:
    direct = set(cls.__subclasses__())
    return direct.union(*(subclasses(c) for c in direct))


def test_every_json_config_is_covered():
    assert subclasses(JsonConfig) == {c[0] for c in CONFIGS}


@pytest.mark.parametrize("cls, name, field, value", CONFIGS, ids=IDS)
def test_round_trip(cls, name, field, value):
    assert cls.config_name == name
    for cfg in (cls(), cls(**{field: value})):
        d = cfg.to_dict()
        assert sorted(d) == cls.config_keys()
        assert cls.from_dict(d) == cfg
        assert cls.from_dict(json.loads(cfg.to_json())) == cfg
    assert cls.from_dict({}) == cls()  # missing keys take their defaults


@pytest.mark.parametrize("cls, name, field, value", CONFIGS, ids=IDS)
def test_unknown_keys_are_rejected_in_one_line(cls, name, field, value):
    d = cls().to_dict() | {"zeta": 1, "alpha_": 2}
    with pytest.raises(ValueError) as err:
        cls.from_dict(d)
    message = str(err.value)
    allowed = re.escape(str(cls.config_keys()))
    assert re.fullmatch(rf"unknown {name} keys \['alpha_', 'zeta'\]; allowed: {allowed}", message)


@pytest.mark.parametrize("cls, name, field, value", CONFIGS, ids=IDS)
@pytest.mark.parametrize("bad", [[1, 2], None, "iters", 3, ("a", 1)])
def test_non_dicts_are_rejected_in_one_line(cls, name, field, value, bad):
    with pytest.raises(ValueError) as err:
        cls.from_dict(bad)
    assert str(err.value) == f"a {name} must be a JSON object, got {type(bad).__name__}"


def test_model_config_device_is_runtime_only():
    cfg = ModelConfig(device="cuda:1")
    assert "device" not in cfg.to_dict() and "device" not in ModelConfig.config_keys()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # device is not compared
    with pytest.raises(ValueError, match=r"unknown model config keys \['device'\]"):
        ModelConfig.from_dict(cfg.to_dict() | {"device": "cpu"})


def test_validation_still_applies():
    with pytest.raises(ValueError, match="iters must be"):
        TrainConfig.from_dict({"iters": 0})
    with pytest.raises(ValueError, match="n_seqs must be"):
        AtlasConfig.from_dict({"n_seqs": 0})
