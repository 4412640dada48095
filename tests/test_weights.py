"""Weights: official registry, strict loading with a readable report, class surgery,
safetensors round trip, downloads from a local server. No internet."""

import http.server
import json
import threading

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib import weights as W


def _tiny(**overrides):
    paddle.seed(0)
    return mrt.build_model("tiny", **overrides)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A .pdparams of a tiny model, the way PaddleDetection saves one."""
    path = tmp_path_factory.mktemp("w") / "tiny.pdparams"
    paddle.save(_tiny().state_dict(), str(path))
    return path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_registry_lists_every_size():
    assert sorted(W.OFFICIAL) == ["h", "l", "m", "s", "x"]
    assert W.OFFICIAL["l"].url.endswith("mask_rtdetr_hgnetv2_l_6x_coco.pdparams")
    assert W.OFFICIAL["l"].mask_ap == 45.7 and sorted(W.PRETRAINED_BACKBONES) == sorted(W.OFFICIAL)


def test_count_parameters_per_part():
    shapes = {"backbone.a": [2, 3], "neck.b": [4], "transformer.c": [], "transformer.d.e": [5]}
    assert W.count_parameters(shapes) == {"backbone": 6, "neck": 4, "transformer": 6,
                                          "total": 16, "tensors": 4}
    assert W.count_parameters(shapes, depth=2)["transformer.d"] == 5
    model = _tiny()
    assert W.count_parameters(model)["total"] == sum(int(np.prod(p.shape))
                                                     for p in model.parameters())


def test_strict_load_from_a_path(tiny_file):
    paddle.seed(1)
    model = mrt.build_model("tiny")
    report = W.load_pretrained(model, str(tiny_file))
    assert report.loaded == len(model.state_dict()) and _same_weights(model, _tiny())


def test_mismatch_lists_missing_unexpected_and_misshaped(tiny_file, tmp_path):
    state = W.read_state_dict(tiny_file)
    state.pop("transformer.dec_norm.weight")
    state["transformer.extra.weight"] = np.zeros([3], "float32")
    state["transformer.bbox_head.layers.0.bias"] = np.zeros([7], "float32")
    bad = tmp_path / "bad.pdparams"
    paddle.save(state, str(bad))
    with pytest.raises(W.WeightsMismatchError) as err:
        W.load_pretrained(_tiny(), str(bad))
    text = str(err.value)
    assert "bad.pdparams" in text and "transformer.dec_norm.weight" in text
    assert "transformer.extra.weight" in text
    assert "transformer.bbox_head.layers.0.bias file [7] model [64]" in text


def test_other_num_classes_keeps_all_but_class_tensors(tiny_file):
    model = _tiny(num_classes=7)
    with pytest.raises(W.WeightsMismatchError, match="skip_mismatch_classes=True"):
        W.load_pretrained(model, str(tiny_file))
    before = model.transformer.score_head.weight.numpy().copy()
    report = W.load_pretrained(model, str(tiny_file), skip_mismatch_classes=True)
    assert sorted(report.skipped) == sorted(W.CLASS_DEPENDENT)
    assert np.array_equal(model.transformer.score_head.weight.numpy(), before)
    source = _tiny()
    assert np.array_equal(model.transformer.bbox_head.layers[0].weight.numpy(),
                          source.transformer.bbox_head.layers[0].weight.numpy())


def test_300_query_weights_run_with_100_queries(tiny_file):
    model = _tiny(num_queries=30)  # tiny trains with 100: no weight depends on the count
    W.load_pretrained(model, str(tiny_file))
    model.eval()
    out = model({"image": paddle.rand([1, 3, 256, 256]), "scale_factor": paddle.ones([1, 2]),
                 "im_shape": paddle.to_tensor([[256., 256.]])})
    assert out["bbox"].shape[0] == model.post_process.num_top_queries


def test_safetensors_round_trip(tiny_file, tmp_path):
    st = W.pdparams_to_safetensors(tiny_file, tmp_path / "tiny.safetensors")
    back = W.safetensors_to_pdparams(st, tmp_path / "back.pdparams")
    original = W.read_state_dict(tiny_file)
    for path in (st, back):
        state = W.read_state_dict(path)
        assert state.keys() == original.keys()
        assert all(np.array_equal(state[k], original[k]) for k in original)
    model = mrt.build_model("tiny")
    W.load_pretrained(model, str(st))
    assert _same_weights(model, _tiny())


def test_corrupt_and_missing_files(tiny_file, tmp_path):
    cut = tmp_path / "cut.pdparams"
    cut.write_bytes(tiny_file.read_bytes()[:1000])
    with pytest.raises(IOError, match="cut.pdparams"):
        W.load_pretrained(_tiny(), str(cut))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(IOError, match="junk.safetensors"):
        W.read_state_dict(junk)
    with pytest.raises(FileNotFoundError, match="nowhere.pdparams"):
        W.load_pretrained(_tiny(), str(tmp_path / "nowhere.pdparams"))
    for missing in ("gone.pdparams", "gone.safetensors"):  # not "truncated ... download again"
        with pytest.raises(FileNotFoundError, match=f"not found: .*{missing}"):
            W.read_state_dict(tmp_path / missing)


def test_download_from_a_local_server_into_the_cache(tiny_file, tmp_path, monkeypatch):
    monkeypatch.setenv("MRTDETR_CACHE", str(tmp_path / "cache"))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *a, directory=str(tiny_file.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny.pdparams"
        model = mrt.build_model("tiny")
        W.load_pretrained(model, url, progress=False)
        assert (tmp_path / "cache" / "tiny.pdparams").is_file() and _same_weights(model, _tiny())
        W.load_pretrained(model, tiny_file.as_uri(), progress=False)  # file:// URLs too
    finally:
        httpd.shutdown()


def test_backbone_pretrain_ignores_the_classifier(tmp_path):
    source = _tiny()
    state = {k: v.numpy() for k, v in source.backbone.state_dict().items()}
    state["fc.weight"] = np.zeros([2, 2], "float32")  # PaddleClas files carry their head
    path = tmp_path / "hgnet.pdparams"
    paddle.save(state, str(path))
    paddle.seed(5)
    model = mrt.build_model("tiny")
    assert W.load_backbone(model, str(path)).loaded == len(state) - 1
    assert _same_weights(model.backbone, source.backbone)
    del state["stem.stem1.conv.weight"]
    paddle.save(state, str(path))
    with pytest.raises(W.WeightsMismatchError, match="stem.stem1.conv.weight"):
        W.load_backbone(model, str(path))


@pytest.mark.parametrize("arch", ["S", "M", "L", "X", "H"])
def test_official_layout_loads_strictly(ref_dir, refweights, arch, tmp_path):
    """A file with the official names and shapes (the reference's synthetic weights, saved as
    PaddleDetection saves) loads into build_model(arch) with nothing missing or left over."""
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    path = tmp_path / f"{arch}.pdparams"
    paddle.save(refweights.reference_weights(manifest), str(path))
    model = mrt.build_model(arch.lower())
    report = W.load_pretrained(model, str(path))
    assert report.loaded == manifest["num_tensors"]
    first = manifest["params"][0]["name"]
    assert np.array_equal(model.state_dict()[first].numpy(), W.read_state_dict(path)[first])


def test_set_exact_names_every_kind_of_mismatch_and_sets_an_exact_state():
    model = paddle.nn.Sequential(paddle.nn.Linear(2, 3), paddle.nn.Linear(3, 1))
    state = {k: paddle.full(v.shape, 0.5) for k, v in model.state_dict().items()}
    W.set_exact(model, state, "ckpt.pdckpt")
    assert all(float(v.mean()) == 0.5 for v in model.state_dict().values())
    wrong = {**state, "2.weight": paddle.zeros([1])}
    wrong["0.weight"] = paddle.zeros([3, 2])
    del wrong["1.bias"]
    with pytest.raises(W.WeightsMismatchError,
                       match=r"ckpt.pdckpt does not match the model: missing \['1.bias'\], "
                             r"unexpected \['2.weight'\], mis-shaped \['0.weight given"):
        W.set_exact(model, wrong, "ckpt.pdckpt")
