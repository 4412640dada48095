"""Config: presets, checked overrides, YAML round trip, clear errors."""

import os

import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.config import parse_overrides, update_config


def test_presets_differ_as_paddledetection_configs():
    s, lg, h = mrt.model_config("s"), mrt.model_config("l"), mrt.model_config("h")
    assert (s.arch, s.num_prototypes, s.use_encoder_idx, s.expansion) == ("S", 128, [2], 0.5)
    assert (lg.arch, lg.num_prototypes, lg.use_encoder_idx, lg.expansion) == ("L", 32, [3], 1.0)
    assert (h.encoder_hidden_dim, h.num_encoder_layers) == (512, 2)
    assert h.mask_feat_channels == [256, 128]
    assert all(mrt.model_config(a).hidden_dim == 256 for a in "smlxh")


def test_model_overrides_are_checked():
    assert mrt.model_config("l", num_queries=100).num_queries == 100
    with pytest.raises(ValueError, match="num_querys.*valid keys"):
        mrt.model_config("l", num_querys=100)
    with pytest.raises(ValueError, match="must be an integer"):
        mrt.model_config("l", num_queries=1.5)
    with pytest.raises(ValueError, match="unknown arch"):
        mrt.model_config("q")


def test_cli_overrides_resolve_unique_keys():
    cfg = mrt.get_config("tiny")
    upd = parse_overrides(["weights=out/w.pdparams", "model.num_queries=50", "epochs=3"], cfg)
    cfg = update_config(cfg, upd)
    assert (cfg.train.weights, cfg.model.num_queries, cfg.train.epochs) == ("out/w.pdparams", 50, 3)
    with pytest.raises(ValueError, match="unknown override key"):
        parse_overrides(["nope=1"], cfg)
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["epochs"], cfg)


def test_exponent_floats_are_numbers():
    # YAML 1.1 (pyyaml) reads "1e-3" as a string; `-o base_lr=1e-3` must still work
    cfg = mrt.get_config("tiny")
    cfg = update_config(cfg, parse_overrides(["base_lr=1e-3"], cfg))
    assert cfg.train.base_lr == 1e-3
    with pytest.raises(ValueError, match="must be a number"):
        update_config(cfg, parse_overrides(["base_lr=fast"], cfg))


def test_a_preset_name_loads_like_a_file_with_overrides(tmp_path):
    cfg = mrt.load_config("Tiny", ["epochs=2", "model.num_queries=30"])
    assert cfg == update_config(mrt.get_config("tiny"), {"train": {"epochs": 2},
                                                         "model": {"num_queries": 30}})
    path = tmp_path / "t.yml"
    path.write_text("preset: tiny\ntrain:\n  epochs: 2\n")
    assert mrt.load_config(str(path), ["model.num_queries=30"]) == cfg
    with pytest.raises(ValueError, match="unknown override key"):
        mrt.load_config("tiny", ["nope=1"])


def test_yaml_round_trip(tmp_path):
    updates = {"train": {"epochs": 2}, "model": {"eval_size": None}}
    cfg = update_config(mrt.get_config("tiny"), updates)
    path = tmp_path / "c.yml"
    mrt.save_config(cfg, str(path))
    assert mrt.load_config(str(path)) == cfg
    bad = tmp_path / "bad.yml"
    bad.write_text("preset: tiny\ntrain:\n  epoch: 3\n")
    with pytest.raises(ValueError, match="bad.yml.*unknown train key.*epochs"):
        mrt.load_config(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.yml"):
        mrt.load_config(str(tmp_path / "missing.yml"))


SHIPPED = ["tiny_shapes.yml", "tiny_shapes_10min.yml", "tiny_shapes_course.yml",
           "tiny_shapes_course_hires.yml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_set_what_they_say(name):
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    assert sorted(os.listdir(root)) == SHIPPED  # list them
    cfg = mrt.load_config(os.path.join(root, name))
    assert cfg.model.arch == "T" and cfg.data.dataset_dir.startswith("dataset/shapes")
    # a recipe, not another model: tiny's weights load into it unchanged
    shapes = {k: v.shape for k, v in mrt.build_model(cfg.model).state_dict().items()}
    tiny = mrt.build_model(mrt.get_config("tiny").model).state_dict()
    assert shapes == {k: v.shape for k, v in tiny.items()}
