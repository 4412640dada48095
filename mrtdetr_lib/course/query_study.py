"""The query-count study: AP against latency for three inference-time knobs.

None of the three changes a weight, so one checkpoint serves every setting:

* `num_queries`: how many encoder tokens the query selection keeps (top-k by class score)
  and the decoder refines; every decoder layer's cost is proportional to it.
* `eval_idx`: the decoder layer whose output is used; layers after it are not run at all
  (training supervises every layer, so each one's output is a usable prediction).
* `num_top_queries`: how many (query, class) pairs the post-process keeps, and so how many
  masks it upsamples to the image size; no effect on the network.

Each setting is a fresh `build_model(cfg, **setting)` with the checkpoint loaded strictly, then
timed (median of `runs`) and scored (COCO box and mask AP) on paddle eager and on ONNX Runtime
(one export per setting). Taught in notebooks/05_query_tuning.ipynb.
"""

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import paddle

from ..config import Config, ModelConfig
from ..data import build_loader
from ..engine.evaluator import evaluate_predictor
from ..export import OnnxPredictor, export_onnx
from ..model.detr import build_model
from ..timing import timed
from ..weights import compare, load_pretrained

KNOBS = ("num_queries", "num_top_queries", "eval_idx")
BACKENDS = ("eager", "onnx")
Weights = Union[None, str, Path, Dict[str, Any]]


def one_at_a_time(base: ModelConfig, **values: Sequence[int]) -> List[Dict[str, int]]:
    """The baseline setting, then each knob's other values with the rest at the baseline, e.g.
    one_at_a_time(cfg, num_queries=[100, 50], eval_idx=[0]) -> 3 settings."""
    for knob in values:
        if knob not in KNOBS:
            raise ValueError(f"unknown knob {knob!r}; choose from {', '.join(KNOBS)}")
    baseline = {knob: getattr(base, knob) for knob in KNOBS}
    baseline["eval_idx"] = _layer_index(base, baseline["eval_idx"])
    settings = [baseline]
    for knob, options in values.items():
        for value in options:
            setting = {**baseline, knob: value}
            if knob == "eval_idx":
                setting[knob] = _layer_index(base, value)
            if setting not in settings:
                settings.append(setting)
    return settings


def _layer_index(cfg: ModelConfig, eval_idx: int) -> int:
    """-1 -> the last layer's index, as the decoder reads it."""
    if not -cfg.num_decoder_layers <= eval_idx < cfg.num_decoder_layers:
        raise ValueError(f"eval_idx={eval_idx} is outside the {cfg.num_decoder_layers} "
                         "decoder layers")
    return eval_idx % cfg.num_decoder_layers


def check_setting(cfg: ModelConfig, setting: Dict[str, int]) -> None:
    """Raise a ValueError naming the knob when a setting cannot run at cfg.eval_size."""
    unknown = set(setting) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; choose from {', '.join(KNOBS)}")
    queries = setting.get("num_queries", cfg.num_queries)
    top = setting.get("num_top_queries", cfg.num_top_queries)
    _layer_index(cfg, setting.get("eval_idx", cfg.eval_idx))
    if cfg.eval_size:  # query selection takes the top num_queries of S tokens (strides 8/16/32)
        tokens = sum((cfg.eval_size[0] // s) * (cfg.eval_size[1] // s) for s in (8, 16, 32))
        if not 0 < queries <= tokens:
            raise ValueError(f"num_queries={queries} must be in 1..{tokens} (the encoder tokens "
                             f"at {tuple(cfg.eval_size)})")
    if not 0 < top <= queries * cfg.num_classes:  # top-k over (query, class) pairs
        raise ValueError(f"num_top_queries={top} must be in 1..num_queries * num_classes "
                         f"= {queries * cfg.num_classes}")


def build_setting(cfg: ModelConfig, setting: Dict[str, int],
                  weights: Weights = None) -> paddle.nn.Layer:
    """A model in eval mode for one setting, with `weights` (path or state dict) loaded strictly;
    random weights (seed 0) when None."""

    check_setting(cfg, setting)
    paddle.seed(0)
    model = build_model(cfg, **setting)
    if isinstance(weights, (str, Path)):
        load_pretrained(model, str(weights), progress=False)  # any mismatch raises
    elif weights is not None:
        missing, unexpected, shapes = compare(model.state_dict(), weights)
        if missing or unexpected or shapes:
            raise ValueError(f"state dict does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, mis-shaped {shapes[:5]}")
        model.set_state_dict(weights)
    model.eval()
    return model


def median_latency(predict: Callable[[], Any], runs: int = 10, warmup: int = 2) -> float:
    """Median wall time of `predict()` in milliseconds, after `warmup` untimed calls."""
    return 1000 * float(np.median(timed(predict, warmup, runs)))


def _numpy_inputs(batch: Dict[str, Any]) -> Dict[str, np.ndarray]:
    return {k: np.asarray(batch[k], dtype="float32") for k in ("image", "im_shape", "scale_factor")}


def _eager_predict(model: paddle.nn.Layer) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    def predict(inputs: Dict[str, Any]) -> Dict[str, Any]:
        with paddle.no_grad():
            return model({k: paddle.to_tensor(v) for k, v in _numpy_inputs(inputs).items()})
    return predict


def _example_inputs(cfg: ModelConfig, loader: Any) -> Dict[str, np.ndarray]:
    """The first evaluation image, or a fixed random one when there is no data (latency only)."""
    if loader is not None:
        return _numpy_inputs(next(iter(loader)))
    if not cfg.eval_size:
        raise ValueError("a latency-only study needs cfg.eval_size (the input size to time)")
    image = np.random.default_rng(0).random((1, 3, *cfg.eval_size), dtype="float32")
    return {"image": image, "im_shape": np.array([cfg.eval_size], "float32"),
            "scale_factor": np.ones((1, 2), "float32")}


def _ap(predict: Callable, loader: Any) -> Dict[str, Optional[float]]:
    if loader is None:
        return {"box_AP": None, "mask_AP": None}

    dataset = loader.dataset
    metrics = evaluate_predictor(predict, loader, dataset.coco, dataset.cat_ids, progress=False)
    return {"box_AP": float(metrics["bbox"]["stats"][0]),
            "mask_AP": float(metrics["mask"]["stats"][0])}


def query_study(cfg: Config, settings: Sequence[Dict[str, int]], weights: Weights = None,
                evaluate: bool = True, backends: Sequence[str] = BACKENDS, runs: int = 10,
                warmup: int = 2, export_dir: Optional[Union[str, Path]] = None,
                log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """One row per (setting, backend): the knobs, box_AP / mask_AP (COCO, 0-1; None when not
    evaluated) on cfg.data's val split, median latency_ms at batch 1, params_M and the model.

    `weights`: a .pdparams path or state dict (None: random weights, latency only makes sense).
    ONNX files go to `export_dir` (default: a temporary folder).
    """

    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    loader = build_loader(cfg, "val", num_workers=0) if evaluate else None
    inputs = _example_inputs(cfg.model, loader)
    export_dir = Path(export_dir or tempfile.mkdtemp(prefix="query_study_"))
    rows = []
    for setting in settings:
        model = build_setting(cfg.model, setting, weights)
        knobs = {knob: setting.get(knob, getattr(cfg.model, knob)) for knob in KNOBS}
        knobs["eval_idx"] = _layer_index(cfg.model, knobs["eval_idx"])
        arch = cfg.model.arch
        common = {"model": f"Mask RT-DETR-{arch}", "backbone": f"PPHGNetV2-{arch}",
                  "input_shape": "x".join(str(s) for s in inputs["image"].shape[2:]), **knobs,
                  "decoder_layers": knobs["eval_idx"] + 1,
                  "params_M": sum(int(np.prod(p.shape)) for p in model.parameters()) / 1e6}
        for backend in backends:
            if backend == "eager":
                predict = _eager_predict(model)
            else:
                tag = "q{num_queries}_k{num_top_queries}_l{decoder_layers}".format(**common)
                onnx_path = export_onnx(model, export_dir, f"{cfg.model.arch.lower()}_{tag}")
                onnx_predictor = OnnxPredictor(onnx_path)
                predict = lambda batch, p=onnx_predictor: p(_numpy_inputs(batch))  # noqa: E731
            row = {**common, "backend": backend,
                   "latency_ms": median_latency(lambda p=predict: p(inputs), runs, warmup),
                   **_ap(predict, loader)}
            rows.append(row)
            log(_row_line(row))
    return rows


def _row_line(row: Dict[str, Any]) -> str:
    ap = ("" if row["mask_AP"] is None
          else f" box AP {100 * row['box_AP']:.1f} mask AP {100 * row['mask_AP']:.1f}")
    return (f"queries {row['num_queries']:>4} top {row['num_top_queries']:>4} layers "
            f"{row['decoder_layers']} {row['backend']:<5}{ap} {row['latency_ms']:.1f} ms")


TABLE_COLUMNS = (("Model", "model"), ("Backbone", "backbone"), ("Input shape", "input_shape"),
                 ("Queries", "num_queries"), ("Top-k", "num_top_queries"),
                 ("Dec. layers", "decoder_layers"), ("Backend", "backend"),
                 ("Box AP", "box_AP"), ("Mask AP", "mask_AP"), ("Params(M)", "params_M"),
                 ("CPU latency(ms)", "latency_ms"), ("CPU FPS", "fps"))


def _cell(key: str, row: Dict[str, Any]) -> str:
    if key == "fps":
        return f"{1000 / row['latency_ms']:.1f}"
    value = row[key]
    if value is None:
        return "-"
    if key in ("box_AP", "mask_AP"):
        return f"{100 * value:.1f}"  # the seed's AP: percent, one decimal
    if key in ("params_M", "latency_ms"):
        return f"{value:.2f}" if key == "params_M" else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[Dict[str, Any]], latency: bool = True) -> str:
    """A markdown table in the style of the seed's README (Model | ... | Box AP | Mask AP |
    Params(M) | speed); `latency=False` leaves out the timing columns (machine-dependent)."""
    columns = [c for c in TABLE_COLUMNS if latency or c[1] not in ("latency_ms", "fps")]
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join(":---:" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(key, row) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def print_table(rows: Sequence[Dict[str, Any]], latency: bool = True) -> None:
    """Print `markdown_table(rows)`."""
    print(markdown_table(rows, latency))


def _label(row: Dict[str, Any]) -> str:
    return f"q{row['num_queries']} k{row['num_top_queries']} L{row['decoder_layers']}"


def plot_ap_latency(rows: Sequence[Dict[str, Any]], metric: str = "mask_AP", ax: Any = None) -> Any:
    """AP (percent) against median latency, one marker style per backend, each point labelled
    q<queries> k<top-k> L<decoder layers>."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for backend, marker in zip(BACKENDS, "os"):
        points = [r for r in rows if r["backend"] == backend and r[metric] is not None]
        if not points:
            continue
        ax.scatter([r["latency_ms"] for r in points], [100 * r[metric] for r in points],
                   marker=marker, label=backend)
        for r in points:
            ax.annotate(_label(r), (r["latency_ms"], 100 * r[metric]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    ax.set(xlabel="median latency, batch 1 (ms)", ylabel=metric.replace("_", " "),
           title=f"{metric.replace('_', ' ')} against latency")
    ax.legend()
    return ax


def plot_latency(rows: Sequence[Dict[str, Any]], knob: str = "num_queries", ax: Any = None) -> Any:
    """Median latency against one knob's value, a line per backend; rows whose other knobs
    differ from the first row's (the baseline) are left out."""
    import matplotlib.pyplot as plt

    if knob not in KNOBS:
        raise ValueError(f"unknown knob {knob!r}; choose from {', '.join(KNOBS)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    others = [k for k in KNOBS if k != knob]
    rows = [r for r in rows if all(r[k] == rows[0][k] for k in others)]
    for backend in BACKENDS:
        points = sorted((r[knob], r["latency_ms"]) for r in rows if r["backend"] == backend)
        if points:
            ax.plot(*zip(*points), marker="o", label=backend)
    ax.set(xlabel=knob, ylabel="median latency (ms)", title=f"latency against {knob}")
    ax.legend()
    return ax
