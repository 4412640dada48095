"""Query-count study: settings, one checkpoint for every setting, what each knob changes, the
bootstrap over images (AP of a resample = COCO's AP of the same images), interleaved timing, and
the study's rows on eager and ONNX Runtime (tiny, random weights, small shapes data)."""

import contextlib
import io

import numpy as np
import paddle
import pytest
from conftest import tiny_shapes_config
from pycocotools.coco import COCO

import mrtdetr_lib as mrt
from mrtdetr_lib.course.query_study import (
    ap_differences,
    bootstrap_ap,
    build_setting,
    check_setting,
    describe_differences,
    image_matches,
    markdown_differences,
    markdown_table,
    one_at_a_time,
    plot_ap_latency,
    plot_latency,
    query_study,
    resampled_ap,
)
from mrtdetr_lib.data import build_dataset
from mrtdetr_lib.engine.evaluator import COCOEvaluator, evaluate
from mrtdetr_lib.export.benchmark import interleaved_times, latency_stats, runtime, times_by_runtime


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
    return tiny_shapes_config(tmp_path_factory.mktemp("shapes"), num_train=4, num_val=3, size=128)


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
    for row in rows:  # AP from the per-image matches = COCO's AP of the whole set
        assert row["mask_AP"] == resampled_ap(row["matches"]["mask_AP"], range(3))
        assert row["latency_q25_ms"] <= row["latency_ms"] <= row["latency_q75_ms"]
    val = build_dataset(shapes_cfg.data, "val", shapes_cfg.model.eval_size)
    eager_metrics = evaluate(build_setting(shapes_cfg.model, settings[0]), val, progress=False)
    assert eager["mask_AP"] == pytest.approx(eager_metrics["mask"]["stats"][0], abs=1e-12)
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| Model | Backbone | Input shape | Queries")
    assert ("| Mask RT-DETR tiny (course) | PPHGNetV2 tiny (course) | 128x128 | 30 | 50 | 1 "
            "| onnx |") in table  # tiny is the course's own size, not an official T
    assert "latency" not in markdown_table(rows, latency=False)
    assert "IQR" not in markdown_table(rows, latency=False)
    ax = plot_ap_latency(rows)
    assert ax.get_ylabel() == "mask AP (%)" and "(ms)" in ax.get_xlabel()


def test_latency_only_study_and_curve(shapes_cfg):
    settings = one_at_a_time(shapes_cfg.model, num_queries=[50])
    rows = query_study(shapes_cfg, settings, evaluate=False, backends=["eager"], runs=1,
                       warmup=0, log=lambda line: None)
    assert [r["num_queries"] for r in rows] == [100, 50]
    assert all(r["mask_AP"] is None for r in rows)
    assert "| - | - |" in markdown_table(rows)
    ax = plot_latency(rows, "num_queries")
    assert len(ax.containers) == 1  # one error-bar line: eager
    assert list(ax.containers[0].lines[0].get_xdata()) == [50, 100]
    assert ax.get_ylabel() == "latency, batch 1 (ms)"
    with pytest.raises(ValueError, match="unknown backend 'trt'"):
        query_study(shapes_cfg, settings, evaluate=False, backends=["trt"])


# three images, boxes x1, y1, x2, y2 and a class (0 or 1); detections: (class, score, box)
TRUTH = [[(0, (10, 10, 50, 50)), (1, (60, 60, 90, 95))],
         [(0, (5, 5, 40, 30))],
         [(1, (20, 20, 70, 60)), (1, (70, 10, 95, 40))]]
GOOD = [[(0, 0.9, (11, 10, 50, 52)), (1, 0.8, (60, 61, 90, 95)), (1, 0.3, (0, 0, 20, 20))],
        [(0, 0.7, (5, 6, 40, 31)), (1, 0.6, (50, 50, 60, 60))],
        [(1, 0.9, (20, 22, 70, 60)), (1, 0.5, (70, 10, 93, 40))]]
# the same detections with worse boxes on the first image and a miss on the last
WORSE = [[(0, 0.9, (15, 14, 50, 56)), (1, 0.8, (62, 66, 90, 95)), (1, 0.3, (0, 0, 20, 20))],
         GOOD[1], GOOD[2][:1]]


def _evaluator(truth, detections):
    """A COCOEvaluator (boxes only) fed one image at a time, image ids 1..n."""
    annotations = [{"id": len(truth) * 10 + i * 10 + k, "image_id": i + 1, "category_id": c + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0}
                   for i, objects in enumerate(truth) for k, (c, (x1, y1, x2, y2))
                   in enumerate(objects)]
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1, "width": 100, "height": 100}
                               for i in range(len(truth))],
                    "annotations": annotations,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    evaluator = COCOEvaluator(coco, iou_types=("bbox",))
    for i, found in enumerate(detections):
        rows = np.array([[c, score, *box] for c, score, box in found], "float32")
        evaluator.update([i + 1], {"bbox": rows, "bbox_num": np.array([len(found)])})
    return evaluator


def test_resampled_ap_is_coco_ap_of_the_resampled_images():
    evaluator = _evaluator(TRUTH, GOOD)
    evaluated = image_matches(evaluator, "bbox")
    coco_ap = evaluator.accumulate()["bbox"]["stats"][0]
    assert resampled_ap(evaluated, range(3)) == pytest.approx(coco_ap, abs=1e-12)
    # a resample with a repeat = COCO's AP of a data set holding that image twice
    twice = _evaluator([TRUTH[0], TRUTH[0], TRUTH[2]], [GOOD[0], GOOD[0], GOOD[2]])
    expected = twice.accumulate()["bbox"]["stats"][0]
    assert resampled_ap(evaluated, [0, 0, 2]) == pytest.approx(expected, abs=1e-12)
    assert expected != pytest.approx(coco_ap)  # the resample changed the AP
    assert resampled_ap(None, range(3)) == 0.0  # nothing detected


def test_resampled_ap_matches_cocoeval_on_random_data_with_tied_scores():
    rng = np.random.default_rng(0)
    truth, found = [], []
    for _ in range(12):
        count = int(rng.integers(0, 4))
        corners, sizes = rng.integers(0, 70, (count, 2)), rng.integers(5, 30, (count, 2))
        boxes = [(x, y, x + w, y + h) for (x, y), (w, h) in zip(corners.tolist(), sizes.tolist())]
        objects = [(int(rng.integers(2)), box) for box in boxes]
        detected = [(c, float(rng.choice([0.3, 0.5, 0.9])),  # tied scores across images
                     tuple(np.add(box, rng.integers(-2, 3, 4)).tolist()))
                    for c, box in objects if rng.random() < 0.8]
        detected.append((int(rng.integers(2)), 0.5, (1, 1, 30, 30)))  # mostly a false positive
        truth.append(objects)
        found.append(detected)
    matches = image_matches(_evaluator(truth, found), "bbox")
    sample = rng.integers(0, 12, 12)
    again = _evaluator([truth[i] for i in sample], [found[i] for i in sample])
    expected = again.accumulate()["bbox"]["stats"][0]
    assert 0.1 < expected < 0.9
    assert resampled_ap(matches, sample) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_is_paired_and_seeded():
    good = image_matches(_evaluator(TRUTH, GOOD), "bbox")
    worse = image_matches(_evaluator(TRUTH, WORSE), "bbox")
    aps = bootstrap_ap([good, good, worse], samples=50, seed=3)
    assert aps.shape == (50, 3)
    np.testing.assert_array_equal(aps[:, 0], aps[:, 1])  # the same resample in every column
    np.testing.assert_array_equal(aps, bootstrap_ap([good, good, worse], samples=50, seed=3))
    assert (aps[:, 2] <= aps[:, 0] + 1e-12).all()  # worse on every image, so on every resample
    with pytest.raises(ValueError, match="different numbers of images"):
        bootstrap_ap([good, image_matches(_evaluator(TRUTH[:2], GOOD[:2]), "bbox")])


def test_ap_differences_to_the_baseline_of_each_backend():
    good = image_matches(_evaluator(TRUTH, GOOD), "bbox")
    worse = image_matches(_evaluator(TRUTH, WORSE), "bbox")
    knobs = {"num_queries": 30, "num_top_queries": 30, "eval_idx": 2, "decoder_layers": 3}
    rows = [{**knobs, "backend": backend, "box_AP": resampled_ap(e, range(3)),
             "matches": {"box_AP": e}}
            for backend in ("eager", "onnx") for e in (good, worse)]
    differences = ap_differences(rows, "box_AP", samples=100)
    assert [d["backend"] for d in differences] == ["eager", "eager", "onnx", "onnx"]
    base, other = differences[:2]
    assert base["difference"] == base["low"] == base["high"] == 0
    assert other["difference"] == pytest.approx(rows[1]["box_AP"] - rows[0]["box_AP"])
    assert other["low"] <= other["difference"] <= other["high"] <= 0
    table = markdown_differences(differences, "box_AP")
    assert table.splitlines()[0].startswith("| Setting | Backend | box AP | Δ to baseline")
    assert "| q30 k30 L3 | eager |" in table and table.splitlines()[2].endswith("| baseline |")
    rows[1]["num_queries"] = 10  # say the worse one had fewer queries
    words = describe_differences(ap_differences(rows[:2], "box_AP", samples=100), "box_AP")
    assert words.startswith("- **q10 k30 L3** (fewer queries, eager): box AP -")
    assert words.endswith("- The largest loss of box AP: **q10 k30 L3** (fewer queries).")


def test_interleaved_times_and_their_spread():
    calls = []
    times = interleaved_times([lambda: calls.append("a"), lambda: calls.append("b")], runs=3,
                              warmup=2)
    assert times.shape == (2, 3) and (times >= 0).all()
    assert calls == ["a", "a", "b", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then turns
    stats = latency_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats == {"latency_ms": 3.0, "latency_q25_ms": 2.0, "latency_q75_ms": 4.0}


def test_runtimes_take_turns_only_among_their_own_predictors():
    assert [runtime(b) for b in ("ort_int8", "openvino-bf16", "eager", "paddle_inference")] == [
        "ort", "openvino", "eager", "paddle"]
    calls = []
    names = ("ort_fp32", "eager", "ort_int8")
    times = times_by_runtime({n: (lambda n=n: calls.append(n)) for n in names}, runtime,
                             runs=2, warmup=1)
    assert list(times) == list(names) and all(t.shape == (2,) for t in times.values())
    # ORT's two predictors warm up and take turns; eager runs only after them, never between
    assert calls == ["ort_fp32", "ort_int8", "ort_fp32", "ort_int8", "ort_int8", "ort_fp32",
                     "eager", "eager", "eager"]
