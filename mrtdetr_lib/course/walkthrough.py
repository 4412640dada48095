"""Looking inside the model for teaching: every intermediate tensor of one eval forward pass,
parameter counts per part next to PaddleDetection's manifests, and the check that the trained
model finds every object of the image it walks through.

`forward_intermediates` runs the backbone and neck once with forward hooks (to catch the AIFI
input/output without repeating the neck's code), then the decoder stage step by step through the
public methods of MaskRTDETRTransformer, in the order of its own `forward`; its final output
equals `model(inputs)` (tests/test_course_walkthrough.py). Chapter 02 draws what it returns.
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F

from ..engine.evaluator import eval_mode
from ..model.detr import build_model
from ..viz import PALETTE
from ..weights import count_parameters
from .figures import boxes_to_pixels  # noqa: F401 (chapter 02 imports it from here)
from .tables import format_table

PARTS = ("backbone", "neck", "transformer")
Array = Union[np.ndarray, paddle.Tensor]


def heatmap(values: Array, size: Sequence[int]) -> np.ndarray:
    """A 2-D map [h, w] -> RGB uint8 [size[0], size[1], 3], min..max stretched (viridis-like),
    upsampled without smoothing so every cell of a feature map stays visible."""
    values = np.asarray(values, np.float32)
    span = float(values.max() - values.min()) or 1.0
    grey = ((values - values.min()) / span * 255).astype(np.uint8)
    grey = cv2.resize(grey, (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)


def draw_boxes(image: np.ndarray, boxes_xyxy: Array, thickness: int = 1,
               colour: Optional[Sequence[int]] = None) -> np.ndarray:
    """RGB uint8 image with x1, y1, x2, y2 pixel boxes [n, 4] drawn (one palette colour per box,
    or `colour` for all); no labels, so dozens of boxes stay readable."""
    canvas = np.ascontiguousarray(image, np.uint8).copy()
    for i, box in enumerate(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        rgb = colour if colour is not None else PALETTE[i % len(PALETTE)].tolist()
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), [int(c) for c in rgb], thickness)
    return canvas


def masks_to_pixels(mask_logits: Array, size: Sequence[int]) -> np.ndarray:
    """Mask logits [n, h, w] (stride 4) -> bool [n, H, W] at image size (h, w), bilinear then
    logit > 0 (probability > 0.5), as the post-process does."""
    logits = np.asarray(mask_logits, np.float32)
    if len(logits) == 0:
        return np.zeros((0, *size), bool)
    resized = [cv2.resize(m, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
               for m in logits]
    return np.stack(resized) > 0


def default_reference_dir() -> Path:
    """The PaddleDetection reference folder: env MRTDETR_REFERENCE_DIR, default ../shared/reference
    next to the repository (as the tests look for it)."""
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MRTDETR_REFERENCE_DIR", root.parent / "shared" / "reference"))


def model_shapes(model: paddle.nn.Layer) -> Dict[str, List[int]]:
    """{state_dict name: shape} of a model (parameters and BatchNorm statistics)."""
    return {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def manifest_shapes(path: Union[str, Path]) -> Dict[str, List[int]]:
    """{name: shape} from a reference manifest_{S,M,L,X,H}.json (the official .pdparams keys)."""
    with open(path) as f:
        manifest = json.load(f)
    try:
        return {p["name"]: list(p["shape"]) for p in manifest["params"]}
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a parameter manifest (needs params[].name/.shape, "
                         f"missing {err})") from None


def parameter_table(archs: Sequence[str] = ("s", "m", "l", "x", "h"),
                    reference_dir: Optional[Union[str, Path]] = None) -> List[Dict[str, Any]]:
    """One row per size: the built model's counts per part, the manifest's (None when the
    reference folder is absent) and `same_keys`: names and shapes equal the manifest's."""
    folder = Path(reference_dir) if reference_dir else default_reference_dir()
    rows = []
    for arch in archs:
        ours = model_shapes(build_model(arch))
        path = folder / f"manifest_{arch.upper()}.json"
        theirs = manifest_shapes(path) if path.is_file() else None
        rows.append({"arch": arch, "model": count_parameters(ours),
                     "manifest": count_parameters(theirs) if theirs is not None else None,
                     "same_keys": None if theirs is None else ours == theirs})
    return rows


def format_parameter_table(rows: List[Dict[str, Any]]) -> str:
    """parameter_table rows as a fixed-width text table, millions of values per part."""
    same = {True: "equal", False: "DIFFER", None: "-"}
    columns = ("size source", *PARTS, "total", "tensors", "keys+shapes")
    lines = []
    for row in rows:
        for source in ("manifest", "model"):
            counts = row[source]
            if counts is None:
                values = ["-"] * 5 + ["no manifest found"]
            else:
                values = [f"{counts.get(part, 0) / 1e6:.3f}M" for part in (*PARTS, "total")]
                values += [counts["tensors"], same[row["same_keys"]] if source == "model" else ""]
            lines.append(dict(zip(columns, [f"{row['arch']} {source}", *values])))
    return format_table(lines)


def _capture(layers: Dict[str, paddle.nn.Layer], store: Dict[str, Any]) -> list:
    """Forward hooks that store each named layer's output; returns the handles to remove."""
    def hook_for(key):
        def hook(layer, inputs, output):
            store[key] = output
        return hook
    return [layer.register_forward_post_hook(hook_for(key)) for key, layer in layers.items()]


def _backbone_and_neck(model: paddle.nn.Layer, image: paddle.Tensor) -> Dict[str, Any]:
    """Backbone + neck once, with hooks on the neck's projections and its AIFI encoder."""
    neck, found = model.neck, {}
    layers = {f"neck_proj{i}": proj for i, proj in enumerate(neck.input_proj)}
    layers["aifi_out"] = neck.encoder[0]
    handles = _capture(layers, found)
    handles.append(neck.encoder[0].register_forward_pre_hook(
        lambda layer, args: found.__setitem__("aifi_in", args[0])))
    try:
        backbone = model.backbone(image)
        enc_feats, mask_feat = neck(backbone)
    finally:
        for handle in handles:
            handle.remove()
    return {"backbone": backbone, "aifi_in": found["aifi_in"], "aifi_out": found["aifi_out"],
            "neck_proj": [found[f"neck_proj{i}"] for i in range(len(neck.input_proj))],
            "neck": enc_feats, "mask_feat": mask_feat}


def _decoder_stage(model: paddle.nn.Layer, out: Dict[str, Any],
                   inputs: Dict[str, paddle.Tensor]) -> None:
    """MaskRTDETRTransformer.forward's eval path (no denoising), one public step at a time."""
    tr, mask_feat = model.transformer, out["mask_feat"]
    memory, spatial_shapes = tr.project_memory(out["neck"])
    anchors, valid_mask = tr.anchors_for(spatial_shapes)
    output_memory, logits, boxes_unact = tr.score_memory(memory, spatial_shapes)
    index, content, ref_unact = tr.select_queries(output_memory, logits, boxes_unact)
    out.update(spatial_shapes=spatial_shapes, anchors=F.sigmoid(anchors), valid_mask=valid_mask,
               token_scores=F.sigmoid(logits.max(-1)), token_boxes=F.sigmoid(boxes_unact),
               topk_index=index, enc_boxes=F.sigmoid(ref_unact))
    out["enc_logits"], out["enc_masks"] = tr.predict(content, mask_feat)
    if tr.mask_enhanced:  # the decoder starts from the boxes around the proposals' masks
        ref_unact = tr.mask_enhanced_reference(out["enc_masks"])
    out["ref_boxes"] = F.sigmoid(ref_unact)
    hidden, boxes = tr.decoder(content, ref_unact, memory, spatial_shapes, tr.bbox_head,
                               tr.query_pos_head)
    preds = [tr.predict(h, mask_feat) for h in hidden]
    out.update(dec_boxes=boxes, dec_logits=[p[0] for p in preds], dec_masks=preds[-1][1])
    out["output"] = model.post_process(boxes[-1], preds[-1][0], preds[-1][1],
                                       inputs["im_shape"], inputs["scale_factor"])


@paddle.no_grad()
def forward_intermediates(model: paddle.nn.Layer, inputs: Dict[str, paddle.Tensor]
                          ) -> Dict[str, Any]:
    """Eval forward of a MaskRTDETR, keeping every step (B images, Q queries, S tokens):

    backbone: 4 maps [B, C_l, H/s, W/s], s = 4..32; neck_proj: 3 maps [B, D, H/s, W/s] after
    the neck's 1x1 projections; aifi_in / aifi_out: tokens [B, h*w, D] of the AIFI level;
    neck: 3 CCFM output maps; mask_feat [B, M, H/4, W/4] prototypes; spatial_shapes;
    anchors [1, S, 4] (0..1, 1 where invalid), valid_mask [1, S, 1]; token_scores [B, S]
    (best class probability of every memory token); token_boxes [B, S, 4];
    topk_index [B, Q]; enc_boxes [B, Q, 4], enc_logits [B, Q, K], enc_masks [B, Q, H/4, W/4];
    ref_boxes [B, Q, 4] (mask-enhanced reference, the decoder's start); dec_boxes /
    dec_logits: per run decoder layer [B, Q, 4] / [B, Q, K]; dec_masks [B, Q, H/4, W/4]
    (last layer); output: the post-processed dict, equal to `model(inputs)`. Boxes: cxcywh 0..1.
    """
    with eval_mode(model):  # eval BatchNorm statistics and no denoising, as in inference
        model._check_size(inputs["image"])
        out = _backbone_and_neck(model, inputs["image"])
        _decoder_stage(model, out, inputs)
    return out


def match_to_truth(detections: Dict[str, np.ndarray], truth: Dict[str, np.ndarray],
                   iou_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """For every ground-truth object (boxes [n,4], labels [n], masks [n,H,W]): the detection of
    the same label whose mask overlaps it most (mask IoU), each detection used once, best first
    -> rows {label, iou, found} with found = iou >= `iou_threshold` (COCO's AP50 rule)."""
    det_masks = np.asarray(detections["masks"]).astype(bool)
    det_labels = np.asarray(detections["labels"]).reshape(-1)
    used, rows = set(), []
    for label, gt_mask in zip(np.asarray(truth["labels"]).reshape(-1),
                              np.asarray(truth["masks"]).astype(bool)):
        ious = [(np.logical_and(m, gt_mask).sum() / max(np.logical_or(m, gt_mask).sum(), 1), j)
                for j, m in enumerate(det_masks) if det_labels[j] == label and j not in used]
        iou, j = max(ious, default=(0.0, None))
        if j is not None and iou >= iou_threshold:
            used.add(j)
        rows.append({"label": int(label), "iou": float(iou), "found": bool(iou >= iou_threshold)})
    return rows
