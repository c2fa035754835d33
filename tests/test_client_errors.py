"""The client CLI: every expected failure is one line on stderr and a non-zero status, never a traceback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from handlers.client import cli
from handlers.testing.local_http import JsonHandler, serving

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "handlers" / "inspection" / "samples" / "ok.png"


class _Refusing(JsonHandler):
    """Answers every POST with a 400 in our handler's error format, and records the path."""

    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).paths.append(self.path)
        body = json.dumps({"error": "option 'target': 'zebra' is not a class label"}).encode()
        self.send_json(400, body)


@pytest.fixture
def refusing_server() -> Iterator[str]:
    """The address of a local server that answers 400 with a message."""
    _Refusing.paths = []
    with serving(_Refusing) as url:
        yield url


def closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def failure(argv: list[str], capsys, status: int) -> str:
    """The one stderr line of ``main(argv)``, asserting its exit status and no traceback."""
    code: int | str | None
    try:
        code = cli.main(argv)
    except SystemExit as stopped:
        code = stopped.code
    assert code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.strip()


def test_unreachable_server_is_one_line_and_not_retried_per_image(tmp_path, capsys, monkeypatch):
    sent: list[tuple] = []
    explain = cli.ExplainClient.explain

    def counted(self, *args):
        sent.append(args)
        return explain(self, *args)

    monkeypatch.setattr(cli.ExplainClient, "explain", counted)
    url = f"http://127.0.0.1:{closed_port()}"
    line = failure(["--concurrency", "1", "--url", url, "--out", str(tmp_path), str(SAMPLE.parent)], capsys, 1)
    message = f"cannot connect to {url}/predictions/inspection: is TorchServe running there?"
    assert line == f"torchserve-gradcam: 4 images: {message}"
    assert len(sent) == 1  # the other images are not sent: they fail with the same error


def test_http_error_shows_the_servers_message_and_a_full_url_is_accepted(refusing_server, tmp_path, capsys):
    url = f"{refusing_server}/predictions/tiny/"
    line = failure(["--url", url, "--target", "zebra", "--out", str(tmp_path), str(SAMPLE)], capsys, 1)
    assert line == f"torchserve-gradcam: {SAMPLE}: HTTP 400: option 'target': 'zebra' is not a class label"
    assert _Refusing.paths == ["/predictions/tiny"]


@pytest.mark.parametrize(
    ("url", "model", "expected"),
    [
        ("http://127.0.0.1:8080", None, ("http://127.0.0.1:8080", "inspection")),
        ("http://127.0.0.1:8080/", "m", ("http://127.0.0.1:8080", "m")),
        ("http://127.0.0.1:8080/predictions/resnet50", None, ("http://127.0.0.1:8080", "resnet50")),
        ("http://127.0.0.1:8080/predictions/resnet50", "resnet50", ("http://127.0.0.1:8080", "resnet50")),
        ("http://h:1/proxy/explanations/m/2.0", None, ("http://h:1/proxy", "m/2.0")),
    ],
)
def test_server_and_model(url, model, expected):
    assert cli.server_and_model(url, model) == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--url", "127.0.0.1:8080"], "--url must be the server's inference address like http://127.0.0.1:8080"),
        (["--url", "http://h:1/predictions/a", "--model", "b"], "--url names model 'a' but --model says 'b'"),
        (["--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["--top-k", "x"], "argument --top-k: must be a whole number, got 'x'"),
        (["--key-file", "/nonexistent/key_file.json"], "cannot read key file /nonexistent/key_file.json"),
        (["--format", "tiles"], "--format tiles (a mosaic of channels) is for --method activations, not 'gradcam'"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, argv, expected):
    line = failure([*argv, "--out", str(tmp_path), str(SAMPLE)], capsys, 2)
    assert line.startswith("torchserve-gradcam: error: ") and expected in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--codec", "aac"], "argument --codec: 'aac' encodes audio, not video"),
        (["--codec", "nope"], "argument --codec: FFmpeg has no encoder 'nope'"),
        (["--method", "none"], "--method none answers without a map"),
    ],
)
def test_video_usage_errors_are_one_line_before_any_frame(tmp_path, capsys, argv, expected):
    pytest.importorskip("av")
    line = failure(["video", str(SAMPLE), "--out", str(tmp_path / "out.mp4"), *argv], capsys, 2)
    assert line.startswith("torchserve-gradcam video: error: ") and expected in line


def test_method_names_are_read_as_the_server_reads_them():
    assert cli.parser().parse_args(["--method", " GradCAM ", str(SAMPLE)]).method == "gradcam"


def test_missing_and_unreadable_images(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "absent.png"
    assert failure([str(missing)], capsys, 2) == f"torchserve-gradcam: error: no such file or folder: {missing}"
    monkeypatch.setattr("handlers.client.inputs.os.access", lambda *_: False)
    line = failure([str(SAMPLE)], capsys, 2)
    assert line == f"torchserve-gradcam: error: cannot read {SAMPLE}: permission denied"


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_at_once_with_one_line(tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = subprocess.Popen(
            [sys.executable, "-m", "handlers.client", "--url", url, "--out", str(tmp_path), str(SAMPLE)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A run started in the background (nohup ... &) ignores SIGINT, and children inherit that:
            # the client must start with the default disposition to get Python's KeyboardInterrupt.
            preexec_fn=_default_sigint,
        )
        connection, _ = silent.accept()  # the request is in flight and gets no answer
        started = time.monotonic()
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=30)
        connection.close()
    assert client.returncode == cli.INTERRUPTED and time.monotonic() - started < 10
    assert err.strip() == "torchserve-gradcam: interrupted" and out == ""
