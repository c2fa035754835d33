"""A server whose Python lacks Captum: one log line and an immediate 503 name it and the install command."""

from __future__ import annotations

import pytest
import requests

from handlers.testing.torchserve import TorchServe

pytestmark = pytest.mark.integration

# Put first on the import path of the server and its workers: 'captum' can no longer be found.
HIDE_CAPTUM = """
import sys


class _WithoutCaptum:
    def find_spec(self, name, path=None, target=None):
        if name == "captum" or name.startswith("captum."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _WithoutCaptum())
"""


def test_a_missing_worker_package_is_named_with_its_install_command(model_store, tmp_path):
    shadow = tmp_path / "without_captum"
    shadow.mkdir()
    (shadow / "sitecustomize.py").write_text(HIDE_CAPTUM)
    server = TorchServe(
        model_store, {"inspection": "inspection.mar"}, tmp_path / "work", env={"PYTHONPATH": str(shadow)}
    )
    server.start(wait_ready=False)
    try:
        server.wait_ready(120)  # no crash loop: the worker loads and answers
        workers = server.worker_pids()
        answer = requests.post(f"{server.url()}/predictions/inspection", data=b"x", timeout=30)
        assert answer.status_code == 503
        message = answer.json()["error"]
        assert "lacks captum; install with: " in message and message.endswith("-m pip install captum")
        lines = [line for line in server.log().splitlines() if "lacks captum; install with: " in line]
        assert len(lines) == 1, server.tail(60)  # one worker, one line
        assert server.worker_pids() == workers  # answering did not cost the worker
    finally:
        server.stop()
