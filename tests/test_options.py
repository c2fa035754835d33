"""Per-request options: precedence, parsing and the 400 messages users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.engine import METHODS
from handlers.serving.errors import RequestError
from handlers.serving.options import OPTIONS, OptionParser

LABELS = ["ok", "scratch", "dent"]


def parser(**defaults) -> OptionParser:
    return OptionParser(LABELS, list(METHODS), defaults, max_targets=10)


def refused(fields=None, headers=None, match=""):
    with pytest.raises(RequestError, match=match) as caught:
        parser().for_request(headers or {}, fields or {})
    assert caught.value.status == 400
    return caught.value


def test_defaults_when_nothing_is_asked():
    options = parser().for_request({}, {})
    assert (options.method, options.targets, options.top_k, options.top_k_explanations) == ("gradcam", (), 3, 1)
    assert (options.format, options.size) == ("grid", "feature")


def test_body_overrides_headers_which_override_model_defaults():
    p = parser(method="none", format="png")
    headers = {"x-explain-method": "guided_gradcam", "X-Explain-Format": "overlay"}
    assert p.for_request(headers, {}).method == "guided_gradcam"
    assert p.for_request(headers, {}).format == "overlay"
    assert p.for_request(headers, {"method": "gradcam"}).method == "gradcam"
    assert p.for_request({}, {}).format == "png"


def test_targets_by_label_index_list_and_comma_text():
    p = parser()
    assert p.for_request({}, {"target": "scratch"}).targets == (1,)
    assert p.for_request({}, {"target": 2}).targets == (2,)
    assert p.for_request({}, {"target": ["dent", "scratch", 2]}).targets == (2, 1)
    assert p.for_request({"x-explain-target": "Scratch, dent"}, {}).targets == (1, 2)
    assert p.for_request({}, {"target": b"0"}).targets == (0,)  # multipart fields arrive as bytes


def test_a_utf8_label_in_a_header_is_read_as_sent():
    """HTTP servers hand header bytes over as latin-1: 'déf' sent as UTF-8 arrives as 'dÃ©f'."""
    p = OptionParser(["ok", "défaut", "凹み"], list(METHODS), {}, max_targets=10)
    as_received = {"x-explain-target": "défaut,凹み".encode().decode("latin-1")}
    assert p.for_request(as_received, {}).targets == (1, 2)
    assert p.for_request({"x-explain-target": "d\xe9faut"}, {}).targets == (1,)  # latin-1 that is not UTF-8: kept


def test_explicit_target_replaces_a_default_top_k():
    options = parser(top_k_explanations=2).for_request({}, {"target": "dent"})
    assert options.targets == (2,) and options.top_k_explanations == 1


def test_top_k_is_capped_at_the_number_of_classes():
    assert parser().for_request({}, {"top_k": "50"}).top_k == 3


def test_explanations_endpoint_turns_a_default_none_into_gradcam():
    p = parser(method="none")
    assert p.for_request({}, {}, explain=True).method == "gradcam"
    assert p.for_request({}, {}, explain=False).method == "none"
    assert p.for_request({"x-explain-method": "none"}, {}, explain=True).method == "none"


@pytest.mark.parametrize(
    "fields,match",
    [
        (
            {"method": "lime"},
            f"option 'method' must be one of {', '.join(METHODS)}; got 'lime'",
        ),
        ({"target": 3}, r"class index 3 is outside 0..2"),
        ({"target": "rust"}, r"'rust' is not a class label; valid: ok, scratch, dent"),
        ({"target": True}, r"class index or label"),
        ({"target": {"a": 1}}, r"class index or label"),
        ({"top_k": 0}, r"option 'top_k' must be from 1"),
        ({"top_k": 1.5}, r"option 'top_k' must be an integer"),
        ({"top_k_explanations": 4}, r"option 'top_k_explanations' must be from 1 to 3"),
        ({"format": "jpeg"}, r"option 'format' must be one of grid, png, overlay, raw"),
        ({"size": "huge"}, r"option 'size' must be one of feature, input"),
        ({"colour": "red"}, r"unknown option 'colour'; valid options: method, target"),
        ({"target": 1, "top_k_explanations": 2}, r"either 'target' or 'top_k_explanations'"),
    ],
)
def test_bad_values_are_a_400_naming_option_and_valid_values(fields, match):
    refused(fields, match=match)


def test_unknown_header_option_is_refused_too():
    refused(headers={"X-Explain-Colour": "red"}, match="unknown option 'colour'")


def test_too_many_targets():
    p = OptionParser([str(i) for i in range(50)], list(METHODS), {}, max_targets=4)
    with pytest.raises(RequestError, match="5 targets, at most 4"):
        p.for_request({}, {"target": [0, 1, 2, 3, 4]})


def test_long_label_lists_are_shortened_in_messages():
    p = OptionParser([f"class{i}" for i in range(1000)], list(METHODS), {}, max_targets=10)
    with pytest.raises(RequestError, match=r"class9, \.\.\. \(1000 labels\) or indices 0..999"):
        p.for_request({}, {"target": "cat"})


def test_invalid_model_defaults_fail_at_load():
    with pytest.raises(ValueError, match=r"invalid 'gradcam\.defaults'.*'method'"):
        parser(method="lime")


def test_a_repeated_option_set_is_parsed_once_and_shared():
    options = parser()
    first = options.for_request({"X-Explain-Method": "none"}, {"top_k": 2})
    assert options.for_request({"x-explain-method": "none"}, {"top_k": 2}) is first
    assert options.for_request({"X-Explain-Method": "none"}, {"top_k": 2}, explain=True) is not first
    assert options.for_request({"X-Explain-Method": "none"}, {"top_k": 3}).top_k == 3


def test_remembered_options_never_hide_a_refusal():
    options = parser()
    assert options.for_request({}, {"top_k": 1}).top_k == 1
    for value in (True, 1.0):  # equal to 1 and of the same hash, yet not an integer option
        for _ in range(2):
            with pytest.raises(RequestError, match="top_k"):
                options.for_request({}, {"top_k": value})
    assert options.for_request({}, {"target": ["dent", 1]}).targets == (2, 1)  # a list: parsed, not remembered


def test_the_memo_stays_bounded_and_right():
    options = parser()
    for k in range(600):
        assert options.for_request({}, {"explain_key": f"user-{k}", "method": "none"}).explain_key == f"user-{k}"
    assert len(options._memo) <= 256


def test_the_dev_config_lets_a_browser_page_send_every_option_as_a_header():
    """config.properties' cors_allowed_headers names each option's X-Explain- header (else its preflight fails)."""
    config = (Path(__file__).resolve().parents[1] / "config.properties").read_text()
    line = next(line for line in config.splitlines() if line.startswith("cors_allowed_headers="))
    allowed = {name.strip().lower() for name in line.split("=", 1)[1].split(",")}
    missing = [name for name in OPTIONS if "x-explain-" + name.replace("_", "-") not in allowed]
    assert not missing
