"""Query-count study: settings, one checkpoint for every setting, what each knob changes, and the
study's rows on eager and ONNX Runtime (tiny, random weights, small shapes data)."""

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.course.query_study import (
    build_setting,
    check_setting,
    markdown_table,
    one_at_a_time,
    plot_ap_latency,
    plot_latency,
    query_study,
)


@pytest.fixture(scope="module")
def tiny_cfg():
    return mrt.model_config("tiny", eval_size=(128, 128))


def _inputs(size=(128, 128)):
    rng = np.random.default_rng(0)
    return {"image": paddle.to_tensor(rng.random((1, 3, *size), dtype="float32")),
            "im_shape": paddle.to_tensor([list(size)], dtype="float32"),
            "scale_factor": paddle.ones([1, 2])}


def test_one_at_a_time_varies_one_knob_from_the_baseline(tiny_cfg):
    settings = one_at_a_time(tiny_cfg, num_queries=[100, 30], eval_idx=[0, -1])
    base = {"num_queries": 100, "num_top_queries": 50, "eval_idx": 2}  # -1 = last of 3 layers
    assert settings == [base, {**base, "num_queries": 30}, {**base, "eval_idx": 0}]
    with pytest.raises(ValueError, match="unknown knob 'queries'"):
        one_at_a_time(tiny_cfg, queries=[10])


@pytest.mark.parametrize("setting, message", [
    ({"num_top_queries": 41}, "num_top_queries=41 must be in 1..num_queries"),
    ({"num_queries": 400}, "num_queries=400 must be in 1..336"),  # 16*16 + 8*8 + 4*4 tokens
    ({"eval_idx": 3}, "eval_idx=3 is outside the 3 decoder layers"),
    ({"queries": 3}, "unknown knob")])
def test_bad_settings_are_named(tiny_cfg, setting, message):
    with pytest.raises(ValueError, match=message):
        check_setting(tiny_cfg, {"num_queries": 10, **setting})


def test_the_same_weights_load_for_any_num_queries(tiny_cfg, tmp_path):
    paddle.seed(1)
    trained = mrt.build_model(tiny_cfg)
    path = tmp_path / "tiny.pdparams"
    paddle.save(trained.state_dict(), str(path))
    for queries in (100, 30):  # strict loading: any missing or mis-shaped key would raise
        model = build_setting(tiny_cfg, {"num_queries": queries}, str(path))
        assert model.transformer.num_queries == queries
        for name, value in model.state_dict().items():
            np.testing.assert_array_equal(value.numpy(), trained.state_dict()[name].numpy())
    official = {k: v.shape for k, v in mrt.build_model("l").state_dict().items()}
    fewer = {k: v.shape for k, v in mrt.build_model("l", num_queries=100).state_dict().items()}
    assert fewer == official  # L's 300-query weights fit a 100-query model


def test_num_top_queries_keeps_the_best_rows(tiny_cfg):
    state = build_setting(tiny_cfg, {}).state_dict()
    with paddle.no_grad():
        full = build_setting(tiny_cfg, {"num_top_queries": 50}, state)(_inputs())
        top = build_setting(tiny_cfg, {"num_top_queries": 10}, state)(_inputs())
    assert top["bbox"].shape[0] == 10 and int(top["bbox_num"][0]) == 10
    np.testing.assert_allclose(top["bbox"].numpy(), full["bbox"].numpy()[:10], atol=1e-5)
    np.testing.assert_array_equal(top["mask"].numpy(), full["mask"].numpy()[:10])


@pytest.mark.parametrize("eval_idx, runs", [(0, 1), (1, 2), (-1, 3)])
def test_eval_idx_runs_only_the_layers_up_to_it(tiny_cfg, eval_idx, runs):
    model = build_setting(tiny_cfg, {"eval_idx": eval_idx})
    calls = []
    hooks = [layer.register_forward_post_hook(lambda *_, i=i: calls.append(i))
             for i, layer in enumerate(model.transformer.decoder.layers)]
    with paddle.no_grad():
        model(_inputs())
    for hook in hooks:
        hook.remove()
    assert calls == list(range(runs))


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory):
    from mrtdetr_lib.data.shapes import make_shapes

    folder = tmp_path_factory.mktemp("shapes")
    make_shapes(str(folder), 4, 3, image_size=128, progress=False)
    cfg = mrt.get_config("tiny")
    cfg.model.eval_size, cfg.data.eval_size = (128, 128), [128, 128]
    cfg.data.dataset_dir, cfg.data.val_image_dir = str(folder), "val"
    cfg.data.val_anno_path = "instances_val.json"
    return cfg


def test_study_rows_on_eager_and_onnx_runtime(shapes_cfg, tmp_path):
    settings = [{"num_queries": 30, "eval_idx": 0}]
    rows = query_study(shapes_cfg, settings, runs=2, warmup=1, export_dir=tmp_path,
                       log=lambda line: None)
    assert [r["backend"] for r in rows] == ["eager", "onnx"]
    assert (tmp_path / "t_q30_k50_l1_b1.onnx").is_file()
    eager, onnx = rows
    for row in rows:
        assert row["num_queries"] == 30 and row["decoder_layers"] == 1
        assert 0 <= row["mask_AP"] <= 1 and 0 <= row["box_AP"] <= 1 and row["latency_ms"] > 0
    # the same detections up to float noise: the same AP to a few hundredths of a point
    assert abs(eager["mask_AP"] - onnx["mask_AP"]) < 1e-3
    assert abs(eager["box_AP"] - onnx["box_AP"]) < 1e-3
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| Model | Backbone | Input shape | Queries")
    assert "| Mask RT-DETR-T | PPHGNetV2-T | 128x128 | 30 | 50 | 1 | onnx |" in table
    assert "latency" not in markdown_table(rows, latency=False)
    plot_ap_latency(rows)


def test_latency_only_study_and_curve(shapes_cfg):
    settings = one_at_a_time(shapes_cfg.model, num_queries=[50])
    rows = query_study(shapes_cfg, settings, evaluate=False, backends=["eager"], runs=1,
                       warmup=0, log=lambda line: None)
    assert [r["num_queries"] for r in rows] == [100, 50]
    assert all(r["mask_AP"] is None for r in rows)
    assert "| - | - |" in markdown_table(rows)
    ax = plot_latency(rows, "num_queries")
    assert len(ax.lines) == 1 and list(ax.lines[0].get_xdata()) == [50, 100]
    with pytest.raises(ValueError, match="unknown backend 'trt'"):
        query_study(shapes_cfg, settings, evaluate=False, backends=["trt"])
