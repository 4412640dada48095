"""data_scripts/: shapes CLI, data set checker CLI, subsets, COCO download (local server only)."""

import json
from pathlib import Path

import conftest
import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    """Import data_scripts/<name>.py as a module."""
    return conftest.load_script("data_scripts", name)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    code = load_script("make_shapes").main(["--out", str(out), "--train", "12", "--val", "4",
                                            "--size", "96", "--no-progress"])
    assert code == 0
    return out


def test_make_shapes_cli_writes_then_is_a_no_op(shapes, capsys):
    assert sorted(p.name for p in shapes.iterdir()) == ["instances_train.json",
                                                        "instances_val.json", "train", "val"]
    assert len(list((shapes / "train").glob("*.jpg"))) == 12
    load_script("make_shapes").main(["--out", str(shapes), "--train", "12", "--val", "4",
                                     "--size", "96", "--no-progress"])
    assert "is up to date" in capsys.readouterr().out


def test_check_dataset_cli_exit_status_and_report(shapes, tmp_path, capsys):
    check = load_script("check_dataset")
    data = json.loads((shapes / "instances_val.json").read_text())
    args = [str(shapes / "instances_val.json"), str(shapes / "val"), "--no-progress"]
    assert check.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == "category id 1 -> label 0: circle"  # the map training will use
    assert out[-1] == f"ok: 4 images, {len(data['annotations'])} annotations, 4 categories"
    assert check.main(args + ["-c", "tiny"]) == 0  # the preset's model has 4 classes
    assert check.main(args + ["--num_classes", "3"]) == 1
    assert "4 categories but num_classes is 3" in capsys.readouterr().out
    data["annotations"][0]["category_id"] = 42
    data["annotations"][1]["bbox"][2] = 500
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    assert check.main([str(broken), str(shapes / "val"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"annotation id {data['annotations'][0]['id']}: unknown category id 42" in out
    assert f"annotation id {data['annotations'][1]['id']}: bbox" in out and "outside" in out
    assert out.strip().endswith("categories") and "2 problem(s)" in out


def test_make_subset_by_category_with_copies(shapes, tmp_path, capsys):
    subset = load_script("make_subset")
    out = tmp_path / "sub" / "anno.json"
    code = subset.main([str(shapes / "instances_train.json"), str(out), "--num", "3",
                        "--categories", "star,1", "--images", str(shapes / "train"),
                        "--copy-to", str(tmp_path / "sub" / "images")])
    assert code == 0 and "wrote" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["circle", "star"]  # ids kept: 1, 4
    assert len(data["images"]) == 3 and {a["category_id"] for a in data["annotations"]} <= {1, 4}
    assert {a["image_id"] for a in data["annotations"]} == {im["id"] for im in data["images"]}
    for im in data["images"]:
        copied = tmp_path / "sub" / "images" / im["file_name"]
        assert copied.is_file() and not copied.is_symlink()
    from mrtdetr_lib.data.check import check_dataset
    assert check_dataset(str(out), str(tmp_path / "sub" / "images")).ok


def test_make_subset_links_random_images_and_rejects_unknown_categories(shapes, tmp_path,
                                                                        capsys):
    subset = load_script("make_subset")
    data = json.loads((shapes / "instances_train.json").read_text())
    a, b = subset.make_subset(data, 5, seed=0), subset.make_subset(data, 5, seed=1)
    assert len(a["images"]) == 5 and a["images"] != b["images"]
    assert subset.make_subset(data, 5, seed=0) == a and len(a["categories"]) == 4
    code = subset.main([str(shapes / "instances_train.json"), str(tmp_path / "s.json"),
                        "--num", "2", "--images", str(shapes / "train"),
                        "--link-to", str(tmp_path / "links")])
    assert code == 0 and all(p.is_symlink() for p in (tmp_path / "links").iterdir())
    code = subset.main([str(shapes / "instances_train.json"), str(tmp_path / "s.json"),
                        "--num", "2", "--categories", "hexagon"])
    assert code == 2 and "unknown categories ['hexagon']" in capsys.readouterr().err


def test_make_subset_reports_fewer_images_than_asked(shapes, tmp_path, capsys):
    subset = load_script("make_subset")
    assert subset.main([str(shapes / "instances_val.json"), str(tmp_path / "s.json"),
                        "--num", "100"]) == 0
    assert "(only 4 images show them)" in capsys.readouterr().out


def test_corrupt_images_found_by_the_checker_fail_the_loader_clearly(shapes, tmp_path):
    """The checker and the loader agree on a corrupt file."""
    import shutil

    from mrtdetr_lib.data.check import check_dataset
    root = tmp_path / "copy"
    shutil.copytree(shapes, root)
    cv2.imwrite(str(root / "val" / "000000.jpg"), np.zeros((10, 10, 3), np.uint8))  # wrong size
    (root / "val" / "000003.jpg").write_bytes(b"")
    report = check_dataset(str(root / "instances_val.json"), str(root / "val"))
    text = str(report)
    assert "000000.jpg: image id 1: image is 10x10 (w x h) but the json says 96x96" in text
    assert "000003.jpg: image id 4: image file cannot be decoded" in text


# ---------------------------------------------------------------- download_coco (local server)
class _Server:
    """A 127.0.0.1 HTTP server (thread) with Range support that can cut its first response."""

    def __init__(self, files):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    server.ranges.append(start)
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                if server.cut_next:  # an interrupted transfer: half the body, then hang up
                    server.cut_next = False
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.files, self.ranges, self.cut_next = files, [], False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _tiny_coco_zip():
    """Bytes of a zip shaped like annotations_trainval2017.zip, with some bulk to resume."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("annotations/instances_val2017.json",
                         json.dumps({"images": [], "annotations": [], "categories": []}))
        archive.writestr("annotations/padding.bin", np.random.default_rng(0).bytes(200_000))
    return buffer.getvalue()


@pytest.fixture()
def coco_server():
    data = _tiny_coco_zip()
    server = _Server({"/annotations/tiny.zip": data})
    yield server, data
    server.close()


def _archives(data, md5=None):
    import hashlib

    script = load_script("download_coco")
    md5 = md5 or hashlib.md5(data).hexdigest()
    return script, {"annotations": script.Archive("annotations/tiny.zip", len(data), md5,
                                                  "annotations")}


def test_download_coco_fetches_checks_and_unpacks(coco_server, tmp_path, capsys):
    server, data = coco_server
    script, archives = _archives(data)
    folders = script.download_coco(str(tmp_path), ["annotations"], server.url, archives,
                                   progress=False)
    assert folders == [str(tmp_path / "annotations")]
    assert json.loads((tmp_path / "annotations" / "instances_val2017.json").read_text()) == {
        "images": [], "annotations": [], "categories": []}
    assert not (tmp_path / "tiny.zip").exists()  # removed after unpacking
    assert "annotations: ready in" in capsys.readouterr().out
    script.download_coco(str(tmp_path), ["annotations"], server.url, archives, progress=False)
    assert "already in" in capsys.readouterr().out


def test_download_coco_resumes_an_interrupted_download(coco_server, tmp_path):
    server, data = coco_server
    script, archives = _archives(data)
    server.cut_next = True
    with pytest.raises(OSError, match="run again to resume"):
        script.download_coco(str(tmp_path), ["annotations"], server.url, archives,
                             progress=False)
    assert not (tmp_path / ".annotations.done").exists()
    script.download_coco(str(tmp_path), ["annotations"], server.url, archives, progress=False,
                         keep_zips=True)
    assert server.ranges and 0 < server.ranges[-1] < len(data)  # continued, not restarted
    assert (tmp_path / "tiny.zip").read_bytes() == data
    assert (tmp_path / "annotations" / "padding.bin").stat().st_size == 200_000


def test_download_coco_rejects_a_checksum_mismatch(coco_server, tmp_path, capsys):
    server, data = coco_server
    script, archives = _archives(data, md5="0" * 32)
    with pytest.raises(OSError, match="md5 mismatch"):
        script.download_coco(str(tmp_path), ["annotations"], server.url, archives,
                             progress=False)
    assert not (tmp_path / "annotations").exists() and not (tmp_path / "tiny.zip").exists()


def test_download_coco_cli_errors_are_one_line(coco_server, tmp_path, capsys):
    server, _ = coco_server
    script = load_script("download_coco")
    with pytest.raises(SystemExit):
        script.main(["--only", "test2017"])
    assert "invalid choice" in capsys.readouterr().err
    # the local server has no val2017.zip (or the disk is too small for it): one clear line
    assert script.main(["--dest", str(tmp_path), "--only", "val", "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("HTTP 404" in err or "free in" in err)
    assert sorted(script.ARCHIVES) == ["annotations", "train", "val"]
    assert script.ARCHIVES["val"].md5 == "442b8da7639aecaf257c1dceb8ba8c80"
