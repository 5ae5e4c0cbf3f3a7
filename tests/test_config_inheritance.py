"""`base:` inheritance: resolved before validation, mappings merged, cycles refused in one line."""
import pytest
import yaml

from vitkd.config import ConfigError, load_config, read_yaml


def _w(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_child_keys_merge_over_the_base(tmp_path):
    _w(tmp_path / "b.yaml", {"seed": 1, "data": {"name": "digits", "batch_size": 8}, "train": {"epochs": 3}})
    (tmp_path / "sub").mkdir()
    _w(tmp_path / "sub" / "c.yaml", {"base": "../b.yaml", "data": {"batch_size": 16}, "train": {"lr": 1e-3}})
    raw = read_yaml(tmp_path / "sub" / "c.yaml")
    assert raw == {"seed": 1, "data": {"name": "digits", "batch_size": 16}, "train": {"epochs": 3, "lr": 1e-3}}
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert cfg.data.batch_size == 16 and cfg.train.epochs == 3 and cfg.seed == 1


def test_a_list_of_bases_applies_in_order(tmp_path):
    _w(tmp_path / "a.yaml", {"seed": 1, "train": {"epochs": 3, "lr": 0.1}})
    _w(tmp_path / "b.yaml", {"seed": 2, "train": {"epochs": 5}})
    _w(tmp_path / "c.yaml", {"base": ["a.yaml", "b.yaml"], "train": {"lr": 0.01}})
    assert read_yaml(tmp_path / "c.yaml") == {"seed": 2, "train": {"epochs": 5, "lr": 0.01}}


def test_cycles_and_missing_bases_are_one_line(tmp_path):
    _w(tmp_path / "a.yaml", {"base": "b.yaml"})
    _w(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        read_yaml(tmp_path / "a.yaml")
    _w(tmp_path / "c.yaml", {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match="nope.yaml"):
        read_yaml(tmp_path / "c.yaml")
    _w(tmp_path / "d.yaml", {"base": 3})
    with pytest.raises(ConfigError, match="base"):
        read_yaml(tmp_path / "d.yaml")
