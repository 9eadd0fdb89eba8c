"""AcceleratorConfig: presets, validation, hashing."""

import json

import pytest

from tritium.config import (
    ENGINES,
    PRESETS,
    AcceleratorConfig,
    ConfigError,
    load_config,
    preset,
)


def test_presets_exist_and_validate():
    assert set(PRESETS) == {"tiny", "base", "large"}
    for name, cfg in PRESETS.items():
        assert cfg.name == name
        assert AcceleratorConfig.from_dict(cfg.to_dict()) == cfg


def test_tiny_fits_up5k_budget():
    tiny = preset("tiny")
    # UP5K: 128 KiB SPRAM is the device memory, 8 DSPs, 30 EBR (15 KiB) for scratchpads.
    assert tiny.dev_mem_bytes == 128 * 1024
    assert tiny.spad_bytes + tiny.acc_bytes <= 15 * 1024
    assert "systolic" not in tiny.engines or tiny.sa_rows * tiny.sa_cols <= 8


def test_base_fits_ecp5_85f_budget():
    base = preset("base")
    assert set(base.engines) == set(ENGINES)
    assert base.sa_rows * base.sa_cols <= 156  # MULT18X18D
    assert base.dev_mem_bytes + base.spad_bytes + base.acc_bytes <= 460 * 1024  # DP16KD


def test_hash_is_stable_and_ignores_name():
    base = preset("base")
    assert base.hash == base.replace(name="other").hash
    assert base.hash != base.replace(sa_rows=4).hash
    assert len(base.hash) == 16 and int(base.hash, 16) >= 0
    assert base.hash32 == int(base.hash[:8], 16)
    # engine order does not matter
    a = base.replace(engines=("lut", "ternary"))
    b = base.replace(engines=("ternary", "lut"))
    assert a == b and a.hash == b.hash


@pytest.mark.parametrize(
    "changes, field, rule",
    [
        ({"sa_rows": 0}, "sa_rows", ">= 1"),
        ({"ternary_k": 6}, "ternary_k", "multiple of 4"),
        ({"ternary_serial": 1}, "ternary_serial", "true or false"),
        ({"ternary_serial": True}, "ternary_serial", "queue_depth=0"),
        ({"vector_serial": "yes"}, "vector_serial", "true or false"),
        ({"lut_group": 3}, "lut_group", "1, 2, 4 or 8"),
        ({"lut_max_bits": 5}, "lut_max_bits", "<= 4"),
        ({"bus_width": 48}, "bus_width", "32, 64 or 128"),
        ({"dev_mem_bytes": 3000 * 1024}, "dev_mem_bytes", "power of two"),
        ({"engines": ("gpu",)}, "engines", "may only name"),
        ({"engines": ()}, "engines", "at least one"),
        ({"vec_lanes": 3}, "vec_lanes", "power of two"),
        ({"clock_mhz": 0}, "clock_mhz", "[1, 1000]"),
        ({"sa_cols": 2.5}, "sa_cols", "integer"),
    ],
)
def test_bad_values_name_field_and_rule(changes, field, rule):
    with pytest.raises(ConfigError) as e:
        preset("base").replace(**changes)
    msg = str(e.value)
    assert msg.startswith(f"{field}=")
    assert rule in msg


def test_unknown_fields_and_presets():
    with pytest.raises(ConfigError, match="unknown config field"):
        preset("base").replace(rowz=3)
    with pytest.raises(ConfigError, match="preset must be one of"):
        preset("huge")


def test_frozen():
    with pytest.raises(Exception):
        preset("base").sa_rows = 3  # type: ignore[misc]


def test_load_config_from_json(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"base": "base", "sa_rows": 4, "name": "mine"}))
    cfg = load_config(str(p))
    assert cfg.sa_rows == 4 and cfg.sa_cols == preset("base").sa_cols and cfg.name == "mine"
    assert load_config("tiny") is PRESETS["tiny"]
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="preset"):
        load_config(str(tmp_path / "missing.json"))
