"""Training config: presets, defaults, and errors that name the key path."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from gmrseg.errors import InputError
from gmrseg.training.config import Config, config_from_dict, config_to_dict, list_presets, load_config, save_config


def test_presets_listed():
    assert {"default", "quick", "unet_baseline"} <= set(list_presets())


@pytest.mark.parametrize("name", ["default", "quick", "unet_baseline"])
def test_preset_loads(name):
    config = load_config(name)
    assert isinstance(config, Config)


def test_default_preset_equals_dataclass_defaults():
    assert config_to_dict(load_config("default")) == config_to_dict(Config())


def test_none_gives_defaults():
    assert load_config(None) == Config()


def test_quick_preset_is_gmr_without_rotation():
    config = load_config("quick")
    assert config.network.name == "gmrunet"
    assert config.augmentation.rotation is False


def test_unet_baseline_differs_only_in_network_and_comments():
    default = config_to_dict(load_config("default"))
    baseline = config_to_dict(load_config("unet_baseline"))
    assert baseline["network"]["name"] == "unet"
    default.pop("network")
    baseline.pop("network")
    assert baseline == default


def test_partial_file_fills_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.001\n  name: adamw\n")
    config = load_config(path)
    assert config.optim.lr == 0.001
    assert config.optim.name == "adamw"
    assert config.training.epochs == Config().training.epochs


def test_int_accepted_for_float():
    config = config_from_dict({"optim": {"lr": 1}})
    assert isinstance(config.optim.lr, float)


@pytest.mark.parametrize(
    ("values", "key", "hint"),
    [
        ({"optim": {"lrr": 0.1}}, "optim.lrr", "valid keys in optim"),
        ({"optimizer": {}}, "optimizer", "valid sections"),
        ({"optim": {"name": "adam"}}, "optim.name", "adamw, sgd"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "expected float"),
        ({"optim": {"lr": -1.0}}, "optim.lr", "must be > 0"),
        ({"training": {"epochs": 2.5}}, "training.epochs", "expected int"),
        ({"training": {"epochs": True}}, "training.epochs", "expected int"),
        ({"training": {"amp": "fp8"}}, "training.amp", "bfloat16, float16, none"),
        ({"data": {"patch_size": [64, 64]}}, "data.patch_size", "3 sizes"),
        ({"data": {"patch_size": "big"}}, "data.patch_size", "auto"),
        ({"data": {"batch_size": 0}}, "data.batch_size", ">= 1"),
        ({"data": {"label_pairs": [["a", "a"]]}}, "data.label_pairs[0]", "two different names"),
        ({"schedule": {"name": "step"}}, "schedule.name", "poly, cosine"),
        ({"augmentation": {"rotation": "sometimes"}}, "augmentation.rotation", "auto"),
        ({"preprocessing": {"orientation": "RAR"}}, "preprocessing.orientation", "L/R"),
        ({"validation": {"overlap": 1.0}}, "validation.overlap", "[0, 1)"),
        ({"loss": {"dice_weight": 0.0, "ce_weight": 0.0}}, "loss.dice_weight", "not both 0"),
        ({"optim": 3}, "optim", "mapping"),
    ],
)
def test_invalid_value_names_key(values, key, hint):
    with pytest.raises(InputError) as error:
        config_from_dict(values)
    message = str(error.value)
    assert f"config key {key}:" in message
    assert hint in message


def test_error_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: -3\n")
    with pytest.raises(InputError, match=r"bad\.yaml: config key training\.epochs"):
        load_config(path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(path)


def test_unknown_preset_lists_presets():
    with pytest.raises(InputError, match="quick"):
        load_config("quik")


@pytest.mark.parametrize("source", ["quick", "quick.yaml", Path("quick"), Path("quick.yml")])
def test_preset_by_bare_name(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(source) == load_config("quick")


def test_file_in_working_folder_wins_over_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick.yaml").write_text("optim:\n  lr: 0.0042\n")
    assert load_config("quick.yaml").optim.lr == 0.0042
    assert load_config("quick").optim.lr != 0.0042


def test_cli_train_takes_a_preset_name(tmp_path):
    from gmrseg.cli import build_parser

    args = build_parser().parse_args(["train", str(tmp_path), "-c", "quick", "-o", str(tmp_path / "run")])
    assert load_config(args.config) == load_config("quick")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")


def test_rotation_accepts_bool_and_auto():
    assert config_from_dict({"augmentation": {"rotation": True}}).augmentation.rotation is True
    assert config_from_dict({"augmentation": {"rotation": "auto"}}).augmentation.rotation == "auto"


def test_saved_config_round_trip(tmp_path):
    config = config_from_dict({"optim": {"lr": 0.003}, "data": {"patch_size": [32, 48, 32]}})
    save_config(config, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "lr: 0.003" in text
    assert load_config(tmp_path / "config.yaml") == config
    assert set(yaml.safe_load(text)) == {field.name for field in dataclasses.fields(Config)}
