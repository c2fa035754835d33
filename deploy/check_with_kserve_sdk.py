"""Ask a running server through KServe's own client: the code a KServe model uses to reach its predictor.

KServe's SDK cannot live in the project's environment (kserve 0.21.0 pins psutil 5.9.8), so this
runs from a separate one, against any server with the ``inspection`` model::

    python3 -m venv /tmp/kserve-venv && /tmp/kserve-venv/bin/pip install kserve==0.21.0
    /tmp/kserve-venv/bin/python deploy/check_with_kserve_sdk.py http://127.0.0.1:8080

It sends, at once, a v1 predict with two instances and per-instance options, a v1 explain, a v2
infer with request and input ``parameters`` (parsed back by ``InferResponse.from_bytes``) and a
v2 request with a float tensor, which must be refused with 400; it exits non-zero on a mismatch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import httpx
from kserve.inference_client import InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

SAMPLES = Path(__file__).resolve().parents[1] / "handlers" / "inspection" / "samples"
MODEL = "inspection"


async def check(url: str) -> None:
    image = {path.stem: base64.b64encode(path.read_bytes()).decode() for path in SAMPLES.glob("*.png")}
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    images = InferInput("images", [2], "BYTES", [image["scratch"], image["dent"]], parameters={"target": "dent"})
    request = InferRequest(MODEL, [images], request_id="sdk-1", parameters={"method": "hirescam", "top_k": 2})
    floats = InferRequest(MODEL, [InferInput("x", [1], "FP32", [0.5])])
    predicted, explained, inferred, refused = await asyncio.gather(
        v1.infer(url, {"instances": [{"data": image["scratch"], "target": "dent"}, {"b64": image["ok"]}]}, MODEL),
        v1.explain(url, MODEL, {"instances": [{"data": image["dent"], "method": "cam"}]}),
        v2.infer(url, request, MODEL),
        v2.infer(url, floats, MODEL),
        return_exceptions=True,
    )
    assert isinstance(predicted, dict), predicted
    labels = [answer["predictions"][0]["label"] for answer in predicted["predictions"]]
    targets = [answer["explanations"][0]["target"]["label"] for answer in predicted["predictions"]]
    assert (labels, targets) == (["scratch", "ok"], ["dent", "ok"]), (labels, targets)
    assert isinstance(explained, dict), explained
    assert explained["explanations"][0]["explanations"][0]["method"] == "cam"
    assert not isinstance(inferred, BaseException), inferred
    assert inferred.id == "sdk-1" and inferred.model_name == MODEL
    answers = [{output.name: json.loads(output.data[k]) for output in inferred.outputs} for k in range(2)]
    for answer in answers:
        assert len(answer["predictions"]) == 2
        (explanation,) = answer["explanations"]
        assert (explanation["method"], explanation["target"]["label"]) == ("hirescam", "dent")
    assert isinstance(refused, httpx.HTTPStatusError) and refused.response.status_code == 400, refused
    print(f"ok: v1 {labels}, explain, v2 {[o.name for o in inferred.outputs]}, float tensor refused (400)")


if __name__ == "__main__":
    asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"))
