"""MaskHybridEncoder: toy-size invariances, position embedding, manifests, parity with ppdet."""

import json

import numpy as np
import paddle
import pytest
from conftest import reference_dir
from test_backbone import ARCHS, _official, assert_fingerprint, reference_image

import mrtdetr_lib
from mrtdetr_lib.model.backbone import PPHGNetV2
from mrtdetr_lib.model.encoder import MaskHybridEncoder, build_2d_sincos_position_embedding


def _neck(cfg: mrtdetr_lib.ModelConfig, in_channels, **overrides) -> MaskHybridEncoder:
    """The neck a ModelConfig describes (the same wiring as build_model)."""
    kwargs = dict(hidden_dim=cfg.encoder_hidden_dim, use_encoder_idx=cfg.use_encoder_idx,
                  num_encoder_layers=cfg.num_encoder_layers, nhead=cfg.encoder_nhead,
                  dim_feedforward=cfg.encoder_dim_feedforward, num_prototypes=cfg.num_prototypes,
                  pe_temperature=cfg.pe_temperature, expansion=cfg.expansion,
                  depth_mult=cfg.depth_mult, mask_feat_channels=cfg.mask_feat_channels,
                  eval_size=cfg.eval_size)
    return MaskHybridEncoder(in_channels, **{**kwargs, **overrides})


def _tiny_feats(batch: int = 1, height: int = 256, width: int = 320):
    """Random backbone-like maps for the tiny preset: channels 32/64/128/256, strides 4..32."""
    return [paddle.rand([batch, c, height // s, width // s])
            for c, s in zip([32, 64, 128, 256], [4, 8, 16, 32])]


# ---------------------------------------------------------------- toy tests (tiny preset)
def test_tiny_output_shapes_non_square():
    paddle.seed(0)
    neck = _neck(mrtdetr_lib.model_config("tiny"), [32, 64, 128, 256], eval_size=None)
    neck.eval()
    feats = _tiny_feats(2, 256, 320)
    enc_feats, mask_feat = neck(feats)
    assert [f.shape for f in enc_feats] == [[2, 64, 32, 40], [2, 64, 16, 20], [2, 64, 8, 10]]
    assert mask_feat.shape == [2, 16, 64, 80]
    assert len(feats) == 4  # the caller's list is not consumed (ppdet pops from it)


def test_batch_equals_single_inputs():
    paddle.seed(1)
    neck = _neck(mrtdetr_lib.model_config("tiny"), [32, 64, 128, 256])
    neck.eval()
    feats = _tiny_feats(2, 256, 256)
    enc_feats, mask_feat = neck(feats)
    for i in range(2):
        single_feats, single_mask = neck([f[i:i + 1] for f in feats])
        for batched, single in zip(enc_feats + [mask_feat], single_feats + [single_mask]):
            np.testing.assert_allclose(batched[i:i + 1].numpy(), single.numpy(),
                                       atol=1e-5, rtol=1e-5)


def test_precomputed_position_embedding_is_exact_and_not_saved():
    paddle.seed(2)
    cfg = mrtdetr_lib.model_config("tiny")  # eval_size (256, 256)
    fixed = _neck(cfg, [32, 64, 128, 256])
    free = _neck(cfg, [32, 64, 128, 256], eval_size=None)
    assert list(fixed.state_dict()) == list(free.state_dict())
    assert not any("pos_embed" in name for name in fixed.state_dict())
    free.set_state_dict(fixed.state_dict())
    fixed.eval()
    free.eval()
    feats = _tiny_feats(1, 256, 256)
    for a, b in zip(*[paddle.utils.flatten(neck(feats)) for neck in (fixed, free)]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_gradients_reach_every_trainable_parameter():
    paddle.seed(3)
    neck = _neck(mrtdetr_lib.model_config("tiny"), [32, 64, 128, 256])
    neck.train()
    enc_feats, mask_feat = neck(_tiny_feats(2, 128, 128))
    (sum(f.square().mean() for f in enc_feats) + mask_feat.square().mean()).backward()
    missing = [name for name, p in neck.named_parameters()
               if not p.stop_gradient and p.grad is None]
    assert missing == []


def test_position_embedding_layout():
    """Token k of a w x h map gets (k // h, k % h) in its (w, h) halves: ppdet's layout."""
    embed = build_2d_sincos_position_embedding(3, 2, embed_dim=8, temperature=10000).numpy()
    assert embed.shape == (1, 6, 8)
    omega = 1.0 / 10000 ** (np.arange(2) / 2)
    for k in range(6):
        gw, gh = k // 2, k % 2
        expected = np.concatenate([np.sin(gw * omega), np.cos(gw * omega),
                                   np.sin(gh * omega), np.cos(gh * omega)])
        np.testing.assert_allclose(embed[0, k], expected, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        build_2d_sincos_position_embedding(2, 2, embed_dim=6)


def test_bad_levels_fail_clearly():
    with pytest.raises(ValueError, match="4 levels starting at stride 4"):
        MaskHybridEncoder([64, 128, 256], feat_strides=[8, 16, 32])


def test_to_static_matches_eager_dynamic_shape():
    """Backbone + neck export with a free batch and image size (no tensor-valued branches)."""
    paddle.seed(4)
    cfg = mrtdetr_lib.model_config("tiny")
    backbone = PPHGNetV2("T", return_idx=[0, 1, 2, 3])
    neck = _neck(cfg, backbone.out_channels, eval_size=None)
    model = paddle.nn.Sequential(backbone, neck)
    model.eval()
    image = paddle.rand([2, 3, 192, 224])
    eager = paddle.utils.flatten(model(image))
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "image")]
    static = paddle.utils.flatten(paddle.jit.to_static(model, input_spec=spec,
                                                       full_graph=True)(image))
    for a, b in zip(eager, static):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


# ---------------------------------------------------------------- reference fixtures
def test_position_embedding_matches_reference(ref_dir):
    fixtures = np.load(ref_dir / "unit_fixtures.npz")
    for size in (20, 40, 16):
        expected = fixtures[f"aifi_pos_embed_{size}x{size}"]
        actual = build_2d_sincos_position_embedding(size, size, 256, 10000).numpy()[0]
        np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_manifest(ref_dir, arch):
    """Names, shapes, order and stop_gradient equal PaddleDetection's `neck.*` entries."""
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    expected = [(p["name"][len("neck."):], p["shape"], p["stop_gradient"])
                for p in manifest["params"] if p["name"].startswith("neck.")]
    backbone = PPHGNetV2(arch, return_idx=[0, 1, 2, 3])
    neck = _neck(mrtdetr_lib.model_config(arch.lower()), backbone.out_channels)
    actual = [(name, list(t.shape), t.stop_gradient) for name, t in neck.state_dict().items()]
    assert actual == expected


@pytest.fixture(scope="module", params=sorted(p.name for p in reference_dir().glob("fwd_*.npz")))
def neck_run(request, ref_dir, refweights):
    """(reference npz, AIFI output, neck outputs, mask_feat) for one fwd_<arch>_*_<size>.npz."""
    data = np.load(ref_dir / request.param)
    arch, size = request.param.split("_")[1], int(request.param[:-4].split("_")[-1])
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    weights = refweights.reference_weights(
        [p for p in manifest["params"] if p["name"].startswith(("backbone.", "neck."))])
    backbone = _official(arch)
    neck = _neck(mrtdetr_lib.model_config(arch.lower(), eval_size=(size, size)),
                 backbone.out_channels)
    backbone.set_state_dict({k[len("backbone."):]: v for k, v in weights.items()
                             if k.startswith("backbone.")})
    neck.set_state_dict({k[len("neck."):]: v for k, v in weights.items() if k.startswith("neck.")})
    backbone.eval()
    neck.eval()
    captured = {}

    def keep_aifi_output(layer, inputs, output):  # returns None: the output stays unchanged
        captured["aifi"] = output.numpy()

    neck.encoder[0].register_forward_post_hook(keep_aifi_output)
    with paddle.no_grad():
        enc_feats, mask_feat = neck(backbone(reference_image(data)))
    return data, captured["aifi"], [f.numpy() for f in enc_feats], mask_feat.numpy()


def test_aifi_parity(neck_run):
    data, aifi, _, _ = neck_run
    np.testing.assert_allclose(aifi, data["aifi_out"], atol=1e-3, rtol=1e-3)
    print("aifi_out max |diff|:", float(np.abs(aifi - data["aifi_out"]).max()))


def test_neck_feats_parity(neck_run):
    data, _, enc_feats, _ = neck_run
    diffs = [assert_fingerprint(data, f"neck_feat{i}", f) for i, f in enumerate(enc_feats)]
    print("neck_feat max |diff| per level:", diffs)


def test_mask_feat_parity(neck_run):
    data, _, _, mask_feat = neck_run
    np.testing.assert_allclose(mask_feat, data["mask_feat"], atol=1e-3, rtol=0)
    print("mask_feat max |diff|:", float(np.abs(mask_feat - data["mask_feat"]).max()))
