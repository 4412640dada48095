"""A real-browser check of chapter 04's threshold explorer: JupyterLab driven in headless Chromium.

    python bench/browser_check.py [--notebook notebooks/04_evaluation.ipynb] [--demo] [--full]

Starts JupyterLab on 127.0.0.1 (a free port, a random token) over a temporary folder that copies
the notebook and links everything else of the repository (so `../dataset` works and the committed
notebook is never saved), opens it in Debian's chromium through chromedriver (selenium), runs
every cell from the Run menu, finds the explorer by its caption "N of M detections", moves the
score slider with the keyboard (Home: threshold 0, every detection; End when that is already
shown) and checks that the caption and the picture change. Screenshots go to --out.

`--demo` runs the same steps on a small notebook that builds the same explorer over made-up
detections (no model: it checks the driver itself in seconds). Quick mode (MRTDETR_QUICK=1)
unless --full. `make browser-check` installs chromium and chromium-driver first.
Exit status 0 when the check passes, 1 with a message saying what was not seen.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CAPTION = re.compile(r"(\d+) of (\d+) detections")
CHROMIUM_FLAGS = [  # the machine has no network: no background requests, no sandbox as root
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-quic", "--no-first-run", "--window-size=1500,1100"]
LAB_SETTINGS = {  # every cell in the page (no virtual scrolling), no saving, no news pop-up
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
}
DEMO_CELLS = [  # the explorer of chapter 04 over made-up detections: seconds, no model
    "import mrtdetr_lib.course  # first: sets the process up\n"
    "import numpy as np\n"
    "from mrtdetr_lib.course.explorer import PredictionCache, threshold_explorer",
    "rng = np.random.default_rng(0)\n"
    "k, size = 10, 128\n"
    "boxes = np.sort(rng.uniform(0, size, (k, 2, 2)), axis=1).reshape(k, 4)  # x1, y1 < x2, y2\n"
    "yy, xx = np.mgrid[0:size, 0:size]\n"
    "probs = np.stack([((xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)) * 0.9\n"
    "                  for x1, y1, x2, y2 in boxes]).astype(np.float16)\n"
    "prediction = {'boxes': boxes, 'scores': np.linspace(0.95, 0.05, k),\n"
    "              'labels': np.arange(k) % 4, 'mask_probs': probs}\n"
    "image = np.stack([xx * 0.8 + 40, yy * 0.8 + 40, 255 - xx - yy // 2], -1).astype(np.uint8)\n"
    "cache = PredictionCache([image], [prediction], ['circle', 'square', 'triangle', 'star'])",
    "threshold_explorer(cache, score_threshold=0.5)",
]

# JavaScript run in the page. The explorer: the last caption "N of M detections", its HBox, the
# image and the score slider's handle and readout in that HBox.
FIND_EXPLORER = r"""
const captions = [...document.querySelectorAll('.widget-html-content')]
    .filter(e => /\d+ of \d+ detections/.test(e.textContent));
if (!captions.length) return null;
const caption = captions[captions.length - 1];
const box = caption.closest('.widget-hbox');
if (!box) return null;
const slider = [...box.querySelectorAll('.widget-slider')]
    .find(s => (s.querySelector('.widget-label') || {}).textContent.trim().startsWith('score'));
return {caption: caption, box: box, image: box.querySelector('img'),
        handle: slider ? slider.querySelector('.noUi-handle') : null,
        readout: slider ? slider.querySelector('.widget-readout') : null};
"""
# SHA-256 of the bytes behind the image's (blob:) src: the picture itself, not only its address
IMAGE_DIGEST = r"""
const done = arguments[arguments.length - 1];
fetch(arguments[0].src).then(r => r.arrayBuffer()).then(b => crypto.subtle.digest('SHA-256', b))
    .then(h => done([...new Uint8Array(h)].map(x => x.toString(16).padStart(2, '0')).join('')))
    .catch(e => done('error: ' + e));
"""
PROMPTS = r"""
return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(e => e.textContent.trim()).filter(t => t !== '');
"""  # a folded solution (source_hidden) shows no prompt at all: its cells are not counted
ERRORS = r"""
return [...document.querySelectorAll('.jp-OutputArea-output')]
    .map(e => e.textContent).filter(t => /Traceback \(most recent call last\)/.test(t))
    .map(t => t.trim().split('\n').filter(l => l.trim()).slice(-1)[0]);
"""


class CheckFailed(Exception):
    """What the browser did not show."""


def log(message: str, start: float) -> None:
    """One progress line with the seconds since the start."""
    print(f"[{time.time() - start:6.1f} s] {message}", flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll `condition` until it returns something truthy; CheckFailed naming `what` after
    `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")


def prepare_root(tmp: Path, notebook: Optional[Path]) -> Path:
    """A folder laid out like the repository: notebooks/ holds a copy of the notebook (or the
    demo), every other top-level entry is a link to the real one; returns the notebook's path."""
    root = tmp / "root"
    (root / "notebooks").mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in ("notebooks", ".git"):
            (root / entry.name).symlink_to(entry)
    if notebook is None:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in DEMO_CELLS])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        target = root / "notebooks" / "browser_check_demo.ipynb"
        nbformat.write(nb, target)
        return target
    target = root / "notebooks" / notebook.name
    shutil.copy2(notebook, target)
    return target


def start_lab(root: Path, tmp: Path, port: int, token: str, quick: bool,
              log_file: Any) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:port over `root`, with its own settings, config and runtime
    folders under `tmp` (a user's own Jupyter set-up changes nothing)."""
    settings = tmp / "lab-settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, MRTDETR_QUICK="1" if quick else "0", GLOG_minloglevel="2",
               JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if os.geteuid() == 0:  # CI and the course machines run as root
        command.append("--allow-root")
    return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=root)


def lab_ready(url: str, token: str, lab: subprocess.Popen) -> bool:
    """True once the server answers its status API; CheckFailed if it has exited."""
    if lab.poll() is not None:
        raise CheckFailed(f"JupyterLab exited with status {lab.returncode} (see its log)")
    try:
        with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def stop_lab(lab: subprocess.Popen, url: str, token: str) -> None:
    """Shut the server (and its kernel) down through its API; terminate it if that fails."""
    if lab.poll() is None:
        request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
            lab.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            lab.terminate()
            try:
                lab.wait(10)
            except subprocess.TimeoutExpired:
                lab.kill()


def start_browser(user_data_dir: Path) -> Any:
    """Debian's chromium through its chromedriver (selenium never downloads a browser here)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        raise CheckFailed("chromium or chromedriver not found: apt-get install -y chromium "
                          "chromium-driver (`make browser-check` and `make book-check` do it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # book_check reads the console
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={user_data_dir}"]:
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver))


def click_menu(browser: Any, menu: str, label: str) -> None:
    """Open a menu of the menu bar and click its item `label`, as a person would."""
    from selenium.webdriver.common.by import By

    items = browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
    item = next((i for i in items if i.text.strip() == menu), None)
    if item is None:
        raise CheckFailed(f"no {menu!r} menu in the menu bar: {[i.text for i in items]}")
    item.click()

    def entry() -> Any:
        labels = browser.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-itemLabel")
        return next((e for e in labels if e.text.strip() == label), None)

    wait_for(entry, 10, f"{label!r} in the {menu} menu").click()


def run_all_cells(browser: Any, timeout: float, start: float) -> None:
    """Edit > Clear Outputs of All Cells, Run > Run All Cells, then wait until no cell is queued
    or running; CheckFailed with the error if a cell raised."""
    prompts = lambda: browser.execute_script(PROMPTS)  # noqa: E731
    count = len(prompts())
    click_menu(browser, "Edit", "Clear Outputs of All Cells")  # no stale output is read
    wait_for(lambda: all(p == "[ ]:" for p in prompts()), 30, "the outputs to clear")
    for attempt in range(3):  # a click while the kernel connects can be dropped: click again
        click_menu(browser, "Run", "Run All Cells")
        try:
            wait_for(lambda: any(p != "[ ]:" for p in prompts()), 20, "the first cell to start")
            break
        except CheckFailed:
            if attempt == 2:
                raise
            log("no cell started: Run All Cells again", start)
    log(f"running {count} code cells ...", start)
    deadline, shown = time.time() + timeout, time.time()
    while "[*]:" in prompts():
        if time.time() > deadline:
            raise CheckFailed(f"the notebook did not finish within {timeout:.0f} s")
        if time.time() - shown > 30:
            done = sum(1 for p in prompts() if p not in ("[*]:", "[ ]:"))
            log(f"  {done} of {count} cells have run", start)
            shown = time.time()
        time.sleep(1)
    errors = browser.execute_script(ERRORS)
    if errors:
        raise CheckFailed("a cell raised: " + errors[0])


def explorer_state(browser: Any) -> Optional[Dict[str, Any]]:
    """The explorer's elements with its caption's (shown, total) counts, or None."""
    found = browser.execute_script(FIND_EXPLORER)
    if not found or found["image"] is None or found["handle"] is None:
        return None
    match = CAPTION.search(found["caption"].text)
    if not match:  # the caption is not rendered as text yet
        return None
    src = found["image"].get_attribute("src") or ""
    return dict(found, shown=int(match.group(1)), total=int(match.group(2)), src=src,
                digest=browser.execute_async_script(IMAGE_DIGEST, found["image"]),
                score=found["readout"].text.strip() if found["readout"] else "?")


def open_notebook(browser: Any, url: str, token: str, relative: str) -> None:
    """Open a notebook in JupyterLab and wait until its kernel is idle."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/lab/tree/{relative}?token={token}")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"), 120,
             f"{relative} to open")
    wait_for(lambda: browser.find_elements(
        By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator[data-status='idle']"), 120,
        "the kernel to start")
    # the status bar describes the current widget: a notebook opened without a click may not be
    # current yet (its kernel items stay hidden), so focus it as a user would
    browser.find_element(By.CSS_SELECTOR, ".jp-Notebook").click()
    status = lambda: " ".join(e.text for e in browser.find_elements(  # noqa: E731
        By.CSS_SELECTOR, ".jp-StatusBar-Widget"))
    wait_for(lambda: "| Idle" in status(), 60, "'Idle' in the status bar")


def move_score_slider(browser: Any, before: Dict[str, Any]) -> Dict[str, Any]:
    """Press Home on the score slider (threshold 0: every detection), or End (threshold 1) when
    every detection is shown already; return the explorer once caption and picture changed."""
    from selenium.webdriver.common.keys import Keys

    home = before["shown"] < before["total"]
    before["handle"].click()  # focus the handle, as a click would
    before["handle"].send_keys(Keys.HOME if home else Keys.END)

    def changed() -> Optional[Dict[str, Any]]:
        state = explorer_state(browser)
        moved = state and state["shown"] != before["shown"]
        return state if moved and state["digest"] != before["digest"] else None

    after = wait_for(changed, 60, f"the caption and the picture to change after "
                     f"{'Home' if home else 'End'} on the score slider (caption stays "
                     f"'{before['shown']} of {before['total']} detections')")
    if home and after["shown"] != after["total"]:
        raise CheckFailed(f"score threshold {after['score']} shows {after['shown']} of "
                          f"{after['total']} detections, expected all of them")
    if after["src"] == before["src"]:
        raise CheckFailed("the picture changed but the image's src did not")
    after["key"] = "Home" if home else "End"
    return after


def drive(browser: Any, url: str, token: str, relative: str, out: Path, timeout: float,
          start: float) -> Dict[str, float]:
    """Open, run all, check the explorer; returns the seconds of each phase."""
    times, phase = {}, time.time()
    open_notebook(browser, url, token, relative)
    times["open the notebook"], phase = time.time() - phase, time.time()
    log(f"opened {relative}, kernel idle", start)
    run_all_cells(browser, timeout, start)
    times["run all cells"], phase = time.time() - phase, time.time()
    before = wait_for(lambda: explorer_state(browser), 30,
                      "the threshold explorer (caption 'N of M detections')")
    log(f"explorer: score >= {before['score']}, {before['shown']} of {before['total']} "
        "detections", start)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", before["box"])
    before["box"].screenshot(str(out / "explorer_before.png"))
    phase = time.time()
    after = move_score_slider(browser, before)
    times["move the slider"] = time.time() - phase
    log(f"after {after['key']}: score >= {after['score']}, {after['shown']} of "
        f"{after['total']} detections, new picture ({before['digest'][:8]} -> "
        f"{after['digest'][:8]})", start)
    after["box"].screenshot(str(out / "explorer_after.png"))
    browser.save_screenshot(str(out / "lab.png"))
    return times


def check(notebook: Optional[Path], out: Path, quick: bool, timeout: float) -> Dict[str, float]:
    """The whole check; returns the seconds each phase took. CheckFailed says what failed."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # no screenshot of an earlier run
        old.unlink()
    tmp = Path(tempfile.mkdtemp(prefix="browser_check_"))
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    browser = lab = None
    try:
        target = prepare_root(tmp, notebook)
        with open(out / "jupyterlab.log", "w") as lab_log:
            lab = start_lab(tmp / "root", tmp, port, token, quick, lab_log)
            wait_for(lambda: lab_ready(url, token, lab), 120, "JupyterLab to answer")
            times = {"start JupyterLab": time.time() - start}
            log(f"JupyterLab at {url} (log: {out / 'jupyterlab.log'})", start)
            browser = start_browser(tmp / "chromium-profile")
            relative = target.relative_to(tmp / "root").as_posix()
            times.update(drive(browser, url, token, relative, out, timeout, start))
    except Exception:  # CheckFailed or the driver's own: a picture of the page helps
        if browser is not None:
            browser.save_screenshot(str(out / "failure.png"))
        raise
    finally:
        if browser is not None:
            browser.quit()
        if lab is not None:
            stop_lab(lab, url, token)
        shutil.rmtree(tmp, ignore_errors=True)
    times["total"] = time.time() - start
    return times


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebook", default=str(ROOT / "notebooks" / "04_evaluation.ipynb"))
    parser.add_argument("--demo", action="store_true",
                        help="check the driver on a small made-up explorer instead")
    parser.add_argument("--full", action="store_true", help="full mode (MRTDETR_QUICK=0)")
    parser.add_argument("--out", default=str(ROOT / "build" / "browser_check"),
                        help="folder for the screenshots and JupyterLab's log")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to run all cells")
    args = parser.parse_args(argv)
    notebook = None if args.demo else Path(args.notebook).resolve()
    out = Path(args.out)
    try:
        times = check(notebook, out, quick=not args.full, timeout=args.timeout)
    except Exception as err:  # noqa: BLE001 - CheckFailed, or selenium's own errors
        if not isinstance(err, CheckFailed):
            err = f"{type(err).__name__}: {err}"
        print(f"browser check FAILED: {err}\nscreenshot and JupyterLab's log in {out}/",
              file=sys.stderr)
        return 1
    print("browser check passed: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    print(f"screenshots in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
