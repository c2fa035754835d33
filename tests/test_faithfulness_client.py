"""The client's --faithfulness: sent as a request field, shown in the summary, refused for maps of no class."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from handlers.archive import main as archive_main
from handlers.client import cli
from handlers.client.pipeline import Request
from handlers.serving.handler import GradCamHandler
from handlers.testing.fakes import load_context, run_batch, unpack_mar
from handlers.testing.local_http import JsonHandler, serving

SAMPLE = Path(__file__).resolve().parents[1] / "handlers" / "inspection" / "samples" / "scratch.png"


class _Answering(JsonHandler):
    """Answers every POST with ``answer`` and records each request's body."""

    answer: ClassVar[bytes] = b"{}"
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_json(200, self.answer)

    def do_GET(self) -> None:  # no management API here: the client checks against the engine's registry
        self.send_error(404)


@pytest.fixture(scope="module")
def handlers_answer(tmp_path_factory) -> bytes:
    """Our handler's real answer for scratch.png with faithfulness=drop, as a grid (the client draws it)."""
    work = tmp_path_factory.mktemp("mar")
    archive_main(["inspection", "--name", "inspection", "--export-path", str(work), "--no-check"])
    handler = GradCamHandler()
    handler.initialize(load_context(unpack_mar(work / "inspection.mar", work / "model"), "inspection"))
    row = {"data": bytearray(SAMPLE.read_bytes()), "faithfulness": b"drop", "format": b"grid"}
    statuses, bodies, _ = run_batch(handler, [row])
    assert statuses == [200]
    return json.dumps(bodies[0]).encode()


@pytest.fixture
def server(handlers_answer) -> Iterator[str]:
    _Answering.answer, _Answering.bodies = handlers_answer, []
    with serving(_Answering) as url:
        yield url


def test_the_option_is_sent_and_each_maps_score_shown(server, tmp_path, capsys):
    argv = ["--url", server, "--management-url", server, "--on", "original", "--faithfulness", "drop"]
    assert cli.main([*argv, "--out", str(tmp_path), str(SAMPLE)]) == 0
    (body,) = _Answering.bodies
    assert b'name="faithfulness"\r\n\r\ndrop\r\n' in body
    row = next(line for line in capsys.readouterr().out.splitlines() if "scratch.png" in line)
    assert "scratch (faithfulness 0.97)" in row
    saved = json.loads((tmp_path / "scratch.json").read_text())
    assert saved["explanations"][0]["faithfulness"]["score"] == pytest.approx(0.969, abs=1e-3)


def test_a_method_of_no_class_is_a_usage_error(server, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(
            ["--url", server, "--method", "eigencam", "--faithfulness", "full", "--out", str(tmp_path), str(SAMPLE)]
        )
    assert stopped.value.code == 2
    assert "--faithfulness needs a class-specific method; 'eigencam' maps no class" in capsys.readouterr().err
    assert _Answering.bodies == []


def test_fields_carry_it_for_every_request_of_the_image():
    request = Request("gradcam", ("scratch",), faithfulness="full")
    assert request.fields()["faithfulness"] == "full"
    assert request.fields("guided_gradcam", fmt="raw")["faithfulness"] == "full"  # the contact sheet's second ask
    assert "faithfulness" not in Request().fields()
