"""PPHGNetV2: toy-size behaviour (tiny arch), the five official manifests, parity with ppdet."""

import json

import numpy as np
import paddle
import pytest
from conftest import reference_dir

import mrtdetr_lib  # noqa: F401  (thread set-up)
from mrtdetr_lib.model.backbone import PPHGNetV2

ARCHS = ["S", "M", "L", "X", "H"]
# arch -> PaddleDetection's lr_mult_list (configs/mask_rtdetr/mask_rtdetr_hgnetv2_*_6x_coco.yml)
LR_MULTS = {"S": 0.1, "M": 0.1, "L": 0.05, "X": 0.01, "H": 0.01}


def _official(arch: str) -> PPHGNetV2:
    """The backbone as an official config builds it."""
    return PPHGNetV2(arch, lr_mult_list=[0.0] + [LR_MULTS[arch]] * 4, return_idx=[0, 1, 2, 3])


# ---------------------------------------------------------------- toy tests (arch T)
def test_tiny_output_shapes_non_square():
    paddle.seed(0)
    net = PPHGNetV2("T", return_idx=[0, 1, 2, 3])
    net.eval()
    feats = net(paddle.rand([1, 3, 256, 320]))
    assert net.out_channels == [32, 64, 128, 256]
    assert [f.shape for f in feats] == [[1, c, 256 // s, 320 // s]
                                        for c, s in zip(net.out_channels, (4, 8, 16, 32))]


def test_return_idx_selects_levels():
    net = PPHGNetV2("T")  # default return_idx (1, 2, 3): strides 8, 16, 32
    net.eval()
    feats = net(paddle.rand([1, 3, 64, 64]))
    assert net.out_channels == [64, 128, 256] and net.out_strides == [8, 16, 32]
    assert [f.shape[1:] for f in feats] == [[64, 8, 8], [128, 4, 4], [256, 2, 2]]


def test_batch_equals_single_images():
    paddle.seed(1)
    net = PPHGNetV2("T", return_idx=[0, 1, 2, 3], freeze_norm=False)
    net.eval()
    images = paddle.rand([2, 3, 96, 128])
    batched = net(images)
    singles = [net(images[i:i + 1]) for i in range(2)]
    for level, feat in enumerate(batched):
        for i in range(2):
            np.testing.assert_allclose(feat[i:i + 1].numpy(), singles[i][level].numpy(),
                                       atol=1e-5, rtol=1e-5)


def test_frozen_stem_and_norms_get_no_gradient():
    net = PPHGNetV2("T", return_idx=[0, 1, 2, 3])  # freeze_at 0, freeze_stem_only, freeze_norm
    net.train()
    bn = net.stages[0].blocks[0].layers[0].bn
    mean_before = bn._mean.numpy().copy()
    image = paddle.rand([2, 3, 64, 64])
    feats = net(image)
    sum(f.mean() for f in feats).backward()
    assert net.stages[0].blocks[0].layers[0].conv.weight.grad is not None
    assert net.stem.stem1.conv.weight.stop_gradient and net.stem.stem1.conv.weight.grad is None
    assert bn.weight.stop_gradient and bn.weight.grad is None
    # frozen BN uses its running statistics in train mode and never updates them
    np.testing.assert_array_equal(bn._mean.numpy(), mean_before)
    net.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(net(image)[-1].numpy(), feats[-1].numpy())


def test_unfrozen_tiny_trains_everything():
    """The tiny preset (freeze_at -1, freeze_norm False) trains stem and BNs too."""
    net = PPHGNetV2("T", freeze_at=-1, freeze_norm=False)
    trainable = [p for p in net.parameters() if not p.stop_gradient]
    assert len(trainable) == len(net.parameters()) - 2 * len(
        [m for m in net.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)])


def test_lr_mult_reaches_parameters():
    net = PPHGNetV2("T", lr_mult_list=[0.5, 0.1, 0.2, 0.3, 0.4], freeze_norm=False)
    assert net.stem.stem1.conv.weight.optimize_attr["learning_rate"] == 0.5
    for stage, lr in zip(net.stages, [0.1, 0.2, 0.3, 0.4]):
        for name, param in stage.named_parameters():
            if not name.endswith(("_mean", "_variance")):
                assert param.optimize_attr["learning_rate"] == pytest.approx(lr), name
    frozen = PPHGNetV2("T")  # frozen norms: learning rate 0, no weight decay, not trainable
    bn_weight = frozen.stages[1].downsample.bn.weight
    assert bn_weight.optimize_attr["learning_rate"] == 0.0 and not bn_weight.trainable


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="arch 'Q' unknown"):
        PPHGNetV2("Q")
    with pytest.raises(ValueError, match="lr_mult_list needs 5"):
        PPHGNetV2("T", lr_mult_list=[1.0, 1.0])


# ---------------------------------------------------------------- manifests (all five sizes)
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_manifest(ref_dir, arch):
    """Names, shapes, order and stop_gradient equal PaddleDetection's `backbone.*` entries."""
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    expected = [(p["name"][len("backbone."):], p["shape"], p["stop_gradient"])
                for p in manifest["params"] if p["name"].startswith("backbone.")]
    actual = [(name, list(t.shape), t.stop_gradient)
              for name, t in _official(arch).state_dict().items()]
    assert actual == expected


# ---------------------------------------------------------------- parity with PaddleDetection
def _forward_fixtures():
    return sorted(p.name for p in reference_dir().glob("fwd_*.npz"))


def reference_image(data) -> paddle.Tensor:
    """The README's exact input recipe: u8 * float32(1/255), HWC -> [1, 3, H, W]."""
    image = data["input_rgb_u8"].astype(np.float32) * np.float32(1 / 255)
    return paddle.to_tensor(image.transpose(2, 0, 1)[None])


def assert_fingerprint(data, key: str, feat: np.ndarray, atol: float = 1e-3,
                       rtol: float = 1e-3) -> float:
    """Compare [1, C, H, W] with the reference's chmean/chstd/sub fingerprint; max |diff|."""
    stride = int(data[f"{key}__stride"])
    assert list(feat.shape) == list(data[f"{key}__shape"])
    pairs = [(feat.mean((0, 2, 3)), data[f"{key}__chmean"]),
             (feat.std((0, 2, 3)), data[f"{key}__chstd"]),
             (feat[0, :, ::stride, ::stride], data[f"{key}__sub"])]
    for actual, expected in pairs:
        np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=key)
    return max(float(np.abs(a - e).max()) for a, e in pairs)


@pytest.fixture(scope="module", params=_forward_fixtures())
def backbone_run(request, ref_dir, refweights):
    """(reference npz, our backbone outputs) for one fwd_<arch>_<image>_<size>.npz."""
    data = np.load(ref_dir / request.param)
    arch = request.param.split("_")[1]
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    weights = refweights.reference_weights(
        [p for p in manifest["params"] if p["name"].startswith("backbone.")])
    net = _official(arch)
    net.set_state_dict({k[len("backbone."):]: v for k, v in weights.items()})
    net.eval()
    with paddle.no_grad():
        feats = [f.numpy() for f in net(reference_image(data))]
    return data, feats


def test_backbone_parity(backbone_run):
    data, feats = backbone_run
    diffs = [assert_fingerprint(data, f"backbone_feat{i}", f) for i, f in enumerate(feats)]
    print("backbone max |diff| per level:", diffs)
