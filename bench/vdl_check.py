"""A real-browser check of the training dashboard: `mrtdetr train --use_vdl`, then VisualDL's
scalar page in headless Chromium.

    python bench/vdl_check.py [--demo] [--out build/vdl_check]

Trains `tiny` for one quick-mode epoch with an evaluation (`mrtdetr train -c
configs/tiny_shapes.yml --eval --use_vdl`, MRTDETR_QUICK=1, on dataset/shapes), starts
`visualdl --logdir ... --host 127.0.0.1 --port P --language en --disable-telemetry`, opens its
scalar page in Debian's chromium through chromedriver (selenium, as bench/browser_check.py) and
waits until the page shows a drawn chart (a canvas in the tag's group) for each of `loss`,
`loss_class`, `lr` and `mask-mAP`, opening their groups as a user would, and the board serves
each of them its points. `--demo` writes made-up records through the same VisualDLWriter
instead of training (seconds). A screenshot and VisualDL's log go to --out. Exit status 0 when
the check passes, 1 with what was not seen.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, List, Optional

from browser_check import CheckFailed, free_port, log, start_browser, wait_for

ROOT = Path(__file__).resolve().parents[1]
TAGS = ("loss", "loss_class", "lr", "mask-mAP")  # one chart each must be on the page
# JavaScript: the page text, and which tags have a drawn chart: a canvas in the smallest block
# around the tag's group header that holds one and no other tag's name (the chart's own title
# is drawn in the canvas, so the page text holds each tag once); arguments[0] = the tags
PAGE_STATE = """
const own = e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)
    .join('').trim();
const all = [...document.querySelectorAll('body *')];
const drawn = tag => {
    const header = all.find(e => own(e) === tag);
    for (let box = header; box; box = box.parentElement) {
        const names = box.innerText.split('\\n').map(l => l.trim());
        if (arguments[0].some(t => t !== tag && names.includes(t))) return false;
        if ([...box.querySelectorAll('canvas')].some(c => c.width > 0)) return true;
    }
    return false;
};
return {text: document.body ? document.body.innerText : '',
        charts: arguments[0].filter(t => all.some(e => own(e) === t) && drawn(t))};
"""
# JavaScript: click a tag's group header (VisualDL opens only the first group): the first
# element whose own text is the tag; arguments[0] = the tag
OPEN_GROUP = """
const own = e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent)
    .join('').trim();
const header = [...document.querySelectorAll('body *')].find(e => own(e) === arguments[0]);
if (header) { header.scrollIntoView(); header.click(); }
return Boolean(header);
"""


def write_log(logdir: Path, demo: bool, start: float) -> None:
    """A VisualDL log in `logdir`: a quick training run, or made-up records (--demo)."""
    if demo:
        sys.path.insert(0, str(ROOT))
        from mrtdetr_lib.engine.vdl import VisualDLWriter

        writer = VisualDLWriter(str(logdir))
        for step in range(1, 41):
            writer({"kind": "train", "step": step, "epoch": 0, "lr": 1e-4 * min(1, step / 10),
                    "loss": 20 * math.exp(-step / 15) + 5, "loss_class": 1 + 1 / step})
            if step % 20 == 0:
                writer({"kind": "eval", "step": step, "epoch": 1, "bbox_AP": step / 100,
                        "mask_AP": step / 90})
        writer.close()
        return
    if not (ROOT / "dataset" / "shapes" / "instances_train.json").is_file():
        raise CheckFailed("no dataset/shapes: run `make shapes` first")
    command = [sys.executable, "-m", "mrtdetr_lib", "train", "-c", "configs/tiny_shapes.yml",
               "--eval", "--use_vdl", "--vdl_log_dir", str(logdir),
               "--output_dir", str(logdir.parent / "train"), "-o", "epochs=1",
               "num_workers=0"]
    log("training: " + " ".join(command[1:]), start)
    env = {**os.environ, "MRTDETR_QUICK": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"mrtdetr train failed:\n{proc.stderr[-2000:]}")


def start_visualdl(logdir: Path, port: int, log_file: Any) -> subprocess.Popen:
    """VisualDL's board on 127.0.0.1:port (English, no telemetry) over `logdir`."""
    visualdl = Path(sys.executable).with_name("visualdl")
    if not visualdl.exists():
        raise CheckFailed("visualdl not installed: pip install -e '.[vdl]'")
    return subprocess.Popen([str(visualdl), "--logdir", str(logdir), "--host", "127.0.0.1",
                             "--port", str(port), "--language", "en", "--disable-telemetry"],
                            stdout=log_file, stderr=subprocess.STDOUT)


def answers(url: str, board: subprocess.Popen) -> bool:
    """True once the board serves its scalar tags (CheckFailed if it died)."""
    if board.poll() is not None:
        raise CheckFailed(f"visualdl exited with status {board.returncode}")
    try:
        with urllib.request.urlopen(url + "/app/api/scalar/tags", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def page_lines(browser: Any) -> List[str]:
    """The page's text, line by line."""
    state = browser.execute_script(PAGE_STATE, list(TAGS))
    return [line.strip() for line in state["text"].splitlines()]


def open_groups(browser: Any) -> None:
    """Click open the groups of the tags that show no chart (VisualDL opens only the first)."""
    shown = browser.execute_script(PAGE_STATE, list(TAGS))["charts"]
    for tag in TAGS:
        if tag not in shown:
            browser.execute_script(OPEN_GROUP, tag)


def served_points(url: str, logdir: Path) -> dict:
    """{tag: number of points} that the board serves for the charts of TAGS (its scalar API)."""
    counts = {}
    for tag in TAGS:
        query = urllib.parse.urlencode({"run": str(logdir), "tag": tag})
        with urllib.request.urlopen(f"{url}/app/api/scalar/list?{query}", timeout=10) as reply:
            counts[tag] = len(json.loads(reply.read())["data"])
    return counts


def charts_shown(browser: Any) -> Optional[dict]:
    """The page state once every tag of TAGS has a drawn chart, else None."""
    state = browser.execute_script(PAGE_STATE, list(TAGS))
    return state if set(state["charts"]) == set(TAGS) else None


def check(out: Path, demo: bool, timeout: float) -> dict:
    """The whole check; returns the seconds each phase took."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vdl_check_"))
    logdir = tmp / "vdl"
    write_log(logdir, demo, start)
    times = {"write the log": time.time() - start}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    browser = board = None
    with open(out / "visualdl.log", "w") as board_log:
        try:
            board = start_visualdl(logdir, port, board_log)
            wait_for(lambda: answers(url, board), 120, "VisualDL to answer")
            log(f"VisualDL at {url}", start)
            browser = start_browser(tmp / "chromium-profile")
            browser.get(url + "/app/scalar")
            wait_for(lambda: all(tag in page_lines(browser) for tag in TAGS), timeout,
                     f"the tags {', '.join(TAGS)} listed on {url}/app/scalar")
            open_groups(browser)
            state = wait_for(lambda: charts_shown(browser), timeout,
                             f"charts of {', '.join(TAGS)} on {url}/app/scalar")
            points = served_points(url, logdir)
            if min(points.values()) == 0:
                raise CheckFailed(f"charts without points: {points}")
            time.sleep(3)  # the charts fetch their points after drawing their frames
            browser.save_screenshot(str(out / "scalars.png"))
            log(f"charts of {', '.join(state['charts'])} drawn, points {points}: "
                f"{out / 'scalars.png'}", start)
            times["see the charts"] = time.time() - start - times["write the log"]
        except Exception:
            if browser is not None:
                browser.save_screenshot(str(out / "failure.png"))
            raise
        finally:
            if browser is not None:
                browser.quit()
            if board is not None:
                board.terminate()
                board.wait(30)
            shutil.rmtree(tmp, ignore_errors=True)
    times["total"] = time.time() - start
    return times


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="made-up records, no training")
    parser.add_argument("--out", default=str(ROOT / "build" / "vdl_check"),
                        help="folder for the screenshot and VisualDL's log")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to see the charts")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        times = check(out, args.demo, args.timeout)
    except Exception as err:  # noqa: BLE001 - CheckFailed, or selenium's own errors
        if not isinstance(err, CheckFailed):
            err = f"{type(err).__name__}: {err}"
        print(f"vdl check FAILED: {err}\nscreenshot and VisualDL's log in {out}/",
              file=sys.stderr)
        return 1
    print("vdl check passed: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
