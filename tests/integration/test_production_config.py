"""config.prod.properties: token authorization on, no model registration over HTTP."""

from __future__ import annotations

import pytest
import requests

from handlers.testing.torchserve import PROD_CONFIG, TorchServe, bearer, start_with_tokens

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prod_server(model_store, tmp_path_factory):
    server = start_with_tokens(
        TorchServe(
            model_store, {"inspection": "inspection.mar"}, tmp_path_factory.mktemp("prod"), base_config=PROD_CONFIG
        )
    )
    try:
        yield server
    finally:
        server.stop()


def test_settings_come_from_the_production_file(prod_server):
    settings = prod_server.config_path.read_text()
    assert "disable_token_authorization=false" in settings and "enable_model_api=false" in settings
    assert "cors_allowed_origin" not in settings


def test_unauthenticated_request_is_refused_and_authenticated_one_works(prod_server, samples):
    url = f"{prod_server.url()}/predictions/inspection"
    for headers in ({}, bearer("not-the-key"), bearer(prod_server.keys["management"])):
        refused = requests.post(url, data=samples["scratch"], headers=headers, timeout=60)
        # TorchServe 0.12 answers a missing or wrong token with 400 InvalidKeyException
        assert refused.status_code == 400 and "Token Authorization failed" in refused.json()["message"]
    answer = requests.post(url, data=samples["scratch"], headers=bearer(prod_server.keys["inference"]), timeout=60)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "scratch"


def test_models_cannot_be_registered_over_http(prod_server):
    url = f"{prod_server.url('management')}/models"
    params = {"url": "https://example.invalid/evil.mar"}
    registered = requests.post(url, params=params, headers=bearer(prod_server.keys["management"]), timeout=60)
    assert registered.status_code in (403, 405), registered.text
    assert "Token Authorization failed" in requests.post(url, params=params, timeout=60).json()["message"]
