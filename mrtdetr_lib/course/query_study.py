"""The query-count study: AP against latency for three inference-time knobs.

None of the three changes a weight, so one checkpoint serves every setting:

* `num_queries`: how many encoder tokens the query selection keeps (top-k by class score)
  and the decoder refines; every decoder layer's cost is proportional to it.
* `eval_idx`: the decoder layer whose output is used; layers after it are not run at all
  (training supervises every layer, so each one's output is a usable prediction).
* `num_top_queries`: how many (query, class) pairs the post-process keeps, and so how many
  masks it upsamples to the image size; no effect on the network.

Each setting is a fresh `build_model(cfg, **setting)` with the checkpoint loaded strictly, then
scored (COCO box and mask AP) on paddle eager and on ONNX Runtime (one export per setting) and
timed: every predictor warmed up first, then called in turns, round after round, so a change of
load on the machine hits every setting alike (median and quartiles of `runs` calls).

Is a difference in AP real, or the luck of these few images? `ap_differences` answers with a
paired bootstrap over images: resample the validation images with replacement, recompute both
settings' AP on the same resample, and read the spread of the difference. Taught in
notebooks/05_query_tuning.ipynb.
"""

import contextlib
import copy
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import paddle

from ..config import Config, ModelConfig
from ..data import build_loader
from ..engine.evaluator import COCOEvaluator
from ..export import OnnxPredictor, export_onnx
from ..export.benchmark import latency_stats, times_by_runtime
from ..model.detr import build_model
from ..weights import count_parameters, load_pretrained, set_exact
from .tables import format_table

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
        set_exact(model, weights, "the given state dict")
    model.eval()
    return model


def numpy_inputs(batch: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """A loader batch (or feeds) -> image, im_shape, scale_factor as float32 numpy arrays."""
    return {k: np.asarray(batch[k], dtype="float32") for k in ("image", "im_shape", "scale_factor")}


def eager_predictor(model: paddle.nn.Layer) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    """`predict(batch)` -> `model`'s eval outputs (bbox, bbox_num, mask) as numpy arrays, under
    no_grad: the contract of the exports' predictors (the copy to numpy is timed in all)."""
    def predict(inputs: Dict[str, Any]) -> Dict[str, np.ndarray]:
        with paddle.no_grad():
            out = model({k: paddle.to_tensor(v) for k, v in numpy_inputs(inputs).items()})
        return {k: v.numpy() for k, v in out.items()}
    return predict


def _example_inputs(cfg: ModelConfig, loader: Any) -> Dict[str, np.ndarray]:
    """The first evaluation image, or a fixed random one when there is no data (latency only)."""
    if loader is not None:
        return numpy_inputs(next(iter(loader)))
    if not cfg.eval_size:
        raise ValueError("a latency-only study needs cfg.eval_size (the input size to time)")
    image = np.random.default_rng(0).random((1, 3, *cfg.eval_size), dtype="float32")
    return {"image": image, "im_shape": np.array([cfg.eval_size], "float32"),
            "scale_factor": np.ones((1, 2), "float32")}


@dataclass
class ImageMatches:
    """COCOeval's matching, kept per (class, image) so AP can be recomputed on any resample of
    the images without matching again (area "all", the 100 best detections of a class).

    `scores[k][i]` [D] (highest first), `true_positive[k][i]` / `false_positive[k][i]` [T, D]
    bool (one row per IoU threshold 0.5:0.05:0.95; ignored detections are neither),
    `objects` [K, I] the objects that count, `recall_levels` [R] COCO's 101 recall points.
    """

    scores: List[List[np.ndarray]]
    true_positive: List[List[np.ndarray]]
    false_positive: List[List[np.ndarray]]
    objects: np.ndarray
    recall_levels: np.ndarray

    @property
    def num_images(self) -> int:
        return self.objects.shape[1]


def image_matches(evaluator: COCOEvaluator, key: str) -> Optional[ImageMatches]:
    """Run COCOeval's `evaluate()` (the matching) on `evaluator`'s `key` results ("bbox" or
    "mask") and keep it per (class, image); None when nothing was detected."""
    if not evaluator.results[key]:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = evaluator.coco_eval(key)
        coco_eval.evaluate()
    params = coco_eval.params
    num_images, num_areas = len(params.imgIds), len(params.areaRng)
    thresholds = len(params.iouThrs)
    matches = ImageMatches([], [], [], np.zeros((len(params.catIds), num_images), "int64"),
                           np.asarray(params.recThrs))
    for k in range(len(params.catIds)):
        # evalImgs is ordered class, area range, image; area range 0 is "all"
        entries = coco_eval.evalImgs[k * num_areas * num_images:][:num_images]
        empty = np.zeros((thresholds, 0), bool)
        matches.scores.append([np.asarray(e["dtScores"]) if e else np.zeros(0) for e in entries])
        counted = [~np.asarray(e["dtIgnore"], bool) if e else empty for e in entries]
        found = [np.asarray(e["dtMatches"]) != 0 if e else empty for e in entries]
        matches.true_positive.append([f & c for f, c in zip(found, counted)])
        matches.false_positive.append([~f & c for f, c in zip(found, counted)])
        matches.objects[k] = [np.sum(~np.asarray(e["gtIgnore"], bool)) if e else 0
                              for e in entries]
    return matches


def resampled_ap(matches: Optional[ImageMatches], images: Sequence[int]) -> float:
    """COCO AP (IoU 0.5:0.95, all areas, 100 detections: COCOeval's `stats[0]`) over the images
    at positions `images`, repeats allowed (a bootstrap sample); `range(n)` gives the AP of the
    whole set. COCOeval's `accumulate`, vectorised; 0 when nothing was detected."""
    if matches is None:
        return 0.0
    images = np.asarray(images, dtype="int64")
    per_class = []
    for k in range(len(matches.scores)):
        objects = int(matches.objects[k, images].sum())
        if objects == 0:
            continue  # a class without objects in the sample does not count (COCO's -1)
        scores = np.concatenate([matches.scores[k][i] for i in images])
        order = np.argsort(-scores, kind="mergesort")  # COCOeval's order, ties included
        tp = np.cumsum(np.concatenate([matches.true_positive[k][i] for i in images], 1)[:, order],
                       1, dtype="float64")  # [T, D]
        fp = np.cumsum(np.concatenate([matches.false_positive[k][i] for i in images],
                                      1)[:, order], 1, dtype="float64")
        recall = tp / objects
        precision = tp / (tp + fp + np.spacing(1))
        # the precision envelope: the best precision at this recall or any higher one
        precision = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]
        sampled = np.zeros((len(recall), len(matches.recall_levels)))
        for t in range(len(recall)):
            at = np.searchsorted(recall[t], matches.recall_levels, side="left")
            reached = at < recall.shape[1]
            sampled[t, reached] = precision[t, at[reached]]
        per_class.append(sampled.mean())
    return float(np.mean(per_class)) if per_class else float("nan")


def bootstrap_ap(evals: Sequence[Optional[ImageMatches]], samples: int = 1000,
                 seed: int = 0) -> np.ndarray:
    """AP [samples, len(evals)]: each evaluation's AP on `samples` bootstrap resamples of the
    images (drawn with replacement), the same resample for every evaluation in a row of the
    result, so differences between columns are paired. All must cover the same images."""
    sizes = {e.num_images for e in evals if e is not None}
    if len(sizes) > 1:
        raise ValueError(f"the evaluations cover different numbers of images: {sorted(sizes)}")
    num_images = sizes.pop() if sizes else 1
    rng = np.random.default_rng(seed)
    result = np.zeros((samples, len(evals)))
    for sample in range(samples):
        images = rng.integers(0, num_images, num_images)
        result[sample] = [resampled_ap(e, images) for e in evals]
    return result


def score_predictor(predict: Callable, loader: Any) -> Dict[str, Any]:
    """box_AP and mask_AP (COCO, 0-1) of `predict` on the loader's images, and `matches`
    {"box_AP": .., "mask_AP": ..}: the `ImageMatches` that `bootstrap_ap` resamples."""
    if loader is None:
        return {"box_AP": None, "mask_AP": None, "matches": None}
    dataset = loader.dataset
    evaluator = COCOEvaluator(dataset.coco, dataset.cat_ids)
    for batch in loader:
        evaluator.update(batch["im_id"], predict(batch))
    matches = {"box_AP": image_matches(evaluator, "bbox"),
               "mask_AP": image_matches(evaluator, "mask")}
    every = range(len(evaluator.image_ids))
    return {**{metric: resampled_ap(m, every) for metric, m in matches.items()},
            "matches": matches}


def ap_differences(rows: Sequence[Dict[str, Any]], metric: str = "mask_AP", samples: int = 1000,
                   seed: int = 0, level: float = 0.95) -> List[Dict[str, Any]]:
    """Per row, grouped by backend: its setting label, backend, `metric`, and the `difference`
    to the first row of the same backend (the baseline setting) with the `level` percentile
    interval [low, high] of that difference over paired bootstrap resamples of the images."""
    out: List[Dict[str, Any]] = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        group = [r for r in rows if r["backend"] == backend]
        aps = bootstrap_ap([r["matches"][metric] for r in group], samples, seed)
        differences = aps - aps[:, :1]  # [samples, rows]: each setting minus the baseline
        lows, highs = np.percentile(differences, [50 * (1 - level), 50 * (1 + level)], axis=0)
        for row, low, high in zip(group, lows, highs):
            out.append({"setting": _label(row), "backend": backend, metric: row[metric],
                        "changed": [k for k in KNOBS if row[k] != group[0][k]],
                        "difference": row[metric] - group[0][metric],
                        "low": float(low), "high": float(high)})
    return out


def markdown_differences(differences: Sequence[Dict[str, Any]], metric: str = "mask_AP") -> str:
    """A markdown table of `ap_differences` in AP points (percent): value, difference to the
    baseline and its interval, and whether the interval excludes 0 ("clear?")."""
    name = metric.replace("_", " ")
    lines = [f"| Setting | Backend | {name} | Δ to baseline | 95% interval | clear? |",
             "|:---|:---:|---:|---:|:---:|:---:|"]
    for d in differences:
        clear = ("baseline" if not d["changed"]
                 else "yes" if d["low"] > 0 or d["high"] < 0 else "no")
        lines.append(f"| {d['setting']} | {d['backend']} | {100 * d[metric]:.1f} | "
                     f"{100 * d['difference']:+.1f} | [{100 * d['low']:+.1f}, "
                     f"{100 * d['high']:+.1f}] | {clear} |")
    return "\n".join(lines)


KNOB_WORDS = {"num_queries": "fewer queries", "num_top_queries": "fewer kept detections",
              "eval_idx": "fewer decoder layers"}


def describe_differences(differences: Sequence[Dict[str, Any]], metric: str = "mask_AP") -> str:
    """Markdown bullets reading `ap_differences` aloud: per setting what changed, the difference
    in AP points with its interval and whether it is clear of zero; then the largest loss."""
    name, lines = metric.replace("_", " "), []
    for d in differences:
        if not d["changed"]:
            continue
        what = " and ".join(KNOB_WORDS[k] for k in d["changed"])
        if d["low"] > 0 or d["high"] < 0:
            verdict = "a clear " + ("gain" if d["low"] > 0 else "loss")
        else:
            verdict = "not told apart from the baseline on these images (the interval holds 0)"
        lines.append(f"- **{d['setting']}** ({what}, {d['backend']}): {name} "
                     f"{100 * d['difference']:+.1f} points, 95% interval "
                     f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]: {verdict}.")
    worst = min((d for d in differences if d["changed"]), key=lambda d: d["difference"],
                default=None)
    if worst is not None and worst["difference"] < 0:
        lines.append(f"- The largest loss of {name}: **{worst['setting']}** "
                     f"({' and '.join(KNOB_WORDS[k] for k in worst['changed'])}).")
    elif worst is not None:
        lines.append(f"- No setting scored a lower {name} than the baseline.")
    return "\n".join(lines)


def query_study(cfg: Config, settings: Sequence[Dict[str, int]], weights: Weights = None,
                evaluate: bool = True, backends: Sequence[str] = BACKENDS, runs: int = 10,
                warmup: int = 2, export_dir: Optional[Union[str, Path]] = None,
                log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """One row per (setting, backend): the knobs, box_AP / mask_AP (COCO, 0-1; None when not
    evaluated) on cfg.data's val split with their `matches` (see `ap_differences`), latency
    at batch 1 (`latency_stats` of `times_by_runtime`: median and quartiles, ms), params_M.

    `weights`: a .pdparams path or state dict (None: random weights, latency only makes sense).
    ONNX files go to `export_dir` (default: a temporary folder).
    """

    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    loader = build_loader(cfg, "val", num_workers=0) if evaluate else None
    inputs = _example_inputs(cfg.model, loader)
    export_dir = Path(export_dir or tempfile.mkdtemp(prefix="query_study_"))
    rows, timers = [], []
    for setting in settings:
        model = build_setting(cfg.model, setting, weights)
        knobs = {knob: setting.get(knob, getattr(cfg.model, knob)) for knob in KNOBS}
        knobs["eval_idx"] = _layer_index(cfg.model, knobs["eval_idx"])
        common = {**table_names(cfg.model.arch),
                  "input_shape": "x".join(str(s) for s in inputs["image"].shape[2:]), **knobs,
                  "decoder_layers": knobs["eval_idx"] + 1,
                  "params_M": count_parameters(model)["total"] / 1e6}
        for backend in backends:
            if backend == "eager":
                predict = eager_predictor(model)
            else:
                tag = "q{num_queries}_k{num_top_queries}_l{decoder_layers}".format(**common)
                # a copy: paddle.jit.to_static turns the layer it traces into the traced
                # program in place, and the eager row must go on timing the eager model
                onnx_path = export_onnx(copy.deepcopy(model), export_dir,
                                        f"{cfg.model.arch.lower()}_{tag}")
                onnx_predictor = OnnxPredictor(onnx_path)
                predict = lambda batch, p=onnx_predictor: p(numpy_inputs(batch))  # noqa: E731
            rows.append({**common, "backend": backend, **score_predictor(predict, loader)})
            timers.append(lambda p=predict: p(inputs))
            log(_row_line(rows[-1]))
    # the settings of one backend take turns; one backend after the other (export.benchmark)
    times = times_by_runtime(dict(enumerate(timers)), lambda k: rows[k]["backend"], runs, warmup)
    for k, row in enumerate(rows):
        row.update(latency_stats(times[k]))
    return rows


def _row_line(row: Dict[str, Any]) -> str:
    ap = ("" if row["mask_AP"] is None
          else f" box AP {100 * row['box_AP']:.1f} mask AP {100 * row['mask_AP']:.1f}")
    return (f"queries {row['num_queries']:>4} top {row['num_top_queries']:>4} layers "
            f"{row['decoder_layers']} {row['backend']:<5}{ap}")


TABLE_COLUMNS = (("Model", "model"), ("Backbone", "backbone"), ("Input shape", "input_shape"),
                 ("Queries", "num_queries"), ("Top-k", "num_top_queries"),
                 ("Dec. layers", "decoder_layers"), ("Backend", "backend"),
                 ("Box AP", "box_AP"), ("Mask AP", "mask_AP"), ("Params(M)", "params_M"),
                 ("CPU latency(ms)", "latency_ms"), ("IQR(ms)", "latency_iqr"),
                 ("CPU FPS", "fps"))
TIMING = ("latency_ms", "latency_iqr", "fps")


def _cell(key: str, row: Dict[str, Any]) -> str:
    if key == "fps":
        return f"{1000 / row['latency_ms']:.1f}"
    if key == "latency_iqr":  # the middle half of the timed runs
        return f"{row['latency_q25_ms']:.1f}-{row['latency_q75_ms']:.1f}"
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
    Params(M) | speed: median, interquartile range, FPS of the median); `latency=False` leaves
    out the timing columns (machine-dependent)."""
    columns = [c for c in TABLE_COLUMNS if latency or c[1] not in TIMING]
    cells = [{title: _cell(key, row) for title, key in columns} for row in rows]
    return format_table(cells, [title for title, _ in columns], markdown=True)


def table_names(arch: str) -> Dict[str, str]:
    """The Model and Backbone columns: `Mask RT-DETR-L`, `PPHGNetV2-L` for an official size (S to
    H); the course's own arch `T` (the tiny preset) is no official model, and its name says so."""
    if arch == "T":
        return {"model": "Mask RT-DETR tiny (course)", "backbone": "PPHGNetV2 tiny (course)"}
    return {"model": f"Mask RT-DETR-{arch}", "backbone": f"PPHGNetV2-{arch}"}


def print_table(rows: Sequence[Dict[str, Any]], latency: bool = True) -> None:
    """Print `markdown_table(rows)`."""
    print(markdown_table(rows, latency))


def _label(row: Dict[str, Any]) -> str:
    return f"q{row['num_queries']} k{row['num_top_queries']} L{row['decoder_layers']}"


def _latency_error(rows: Sequence[Dict[str, Any]]) -> np.ndarray:
    """[2, n] distances from each median down to the first and up to the third quartile."""
    return np.array([[r["latency_ms"] - r["latency_q25_ms"] for r in rows],
                     [r["latency_q75_ms"] - r["latency_ms"] for r in rows]])


def plot_ap_latency(rows: Sequence[Dict[str, Any]], metric: str = "mask_AP", ax: Any = None) -> Any:
    """AP (percent) against median latency (ms) with its interquartile range as a horizontal
    bar, one marker per backend, each point labelled q<queries> k<top-k> L<decoder layers>."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for backend, marker in zip(BACKENDS, "os"):
        points = [r for r in rows if r["backend"] == backend and r[metric] is not None]
        if not points:
            continue
        ax.errorbar([r["latency_ms"] for r in points], [100 * r[metric] for r in points],
                    xerr=_latency_error(points), fmt=marker, capsize=3, label=backend)
        for r in points:
            ax.annotate(_label(r), (r["latency_ms"], 100 * r[metric]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    name = metric.replace("_", " ")
    ax.set(xlabel="latency, batch 1 (ms): median and interquartile range",
           ylabel=f"{name} (%)", title=f"{name} against latency")
    ax.legend()
    return ax


def plot_latency(rows: Sequence[Dict[str, Any]], knob: str = "num_queries", ax: Any = None) -> Any:
    """Median latency (ms, bars: interquartile range) against one knob's value, a line per
    backend; rows whose other knobs differ from the first row's (the baseline) are left out."""
    import matplotlib.pyplot as plt

    if knob not in KNOBS:
        raise ValueError(f"unknown knob {knob!r}; choose from {', '.join(KNOBS)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    others = [k for k in KNOBS if k != knob]
    rows = [r for r in rows if all(r[k] == rows[0][k] for k in others)]
    for backend in BACKENDS:
        points = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r[knob])
        if points:
            ax.errorbar([r[knob] for r in points], [r["latency_ms"] for r in points],
                        yerr=_latency_error(points), marker="o", capsize=3, label=backend)
    ax.set(xlabel=knob, ylabel="latency, batch 1 (ms)", title=f"latency against {knob}")
    ax.legend()
    return ax
