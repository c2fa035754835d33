"""Finding the image in a request row and decoding it, refusals included."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from handlers.serving.decode import decode_image
from handlers.serving.errors import RequestError
from handlers.serving.payload import extract_payload


def png_bytes(mode: str = "RGB", size=(20, 10), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode in ("RGB", "RGBA") else 128).save(buffer, format="PNG")
    return buffer.getvalue()


def status_of(callable_, *args) -> RequestError:
    with pytest.raises(RequestError) as caught:
        callable_(*args)
    return caught.value


def test_raw_bytes_body():
    data = png_bytes()
    payload = extract_payload({"body": bytearray(data)})
    assert payload.image == data and payload.fields == {}


def test_base64_text_body_and_data_url():
    data = png_bytes()
    assert extract_payload({"body": base64.b64encode(data).decode()}).image == data
    url = "data:image/png;base64," + base64.encodebytes(data).decode()  # wrapped lines too
    assert extract_payload({"body": url}).image == data


def test_json_body_decoded_by_torchserve_or_not():
    data = png_bytes()
    body = {"data": base64.b64encode(data).decode(), "method": "none"}
    for row in ({"body": body}, {"body": bytearray(b'  {"data": "%s", "method": "none"}' % body["data"].encode())}):
        payload = extract_payload(row)
        assert payload.image == data and payload.fields == {"method": "none"}


def test_base64_without_padding_or_in_the_url_safe_alphabet():
    data = png_bytes() + b"\xfb\xff"  # ends so that padding is needed and '+/' (URL-safe: '-_') appear
    for text in (
        base64.b64encode(data).rstrip(b"="),
        base64.urlsafe_b64encode(data),
        base64.urlsafe_b64encode(data)[:-1],
    ):
        assert extract_payload({"body": bytearray(text)}).image == data
        assert extract_payload({"body": {"data": text.decode()}}).image == data


def test_json_with_a_byte_order_mark():
    data = png_bytes()
    text = json.dumps({"data": base64.b64encode(data).decode(), "method": "none"})
    for body in (bytearray(b"\xef\xbb\xbf" + text.encode()), "\ufeff" + text):
        payload = extract_payload({"body": body})
        assert payload.image == data and payload.fields == {"method": "none"}


def test_multipart_fields():
    data = png_bytes()
    payload = extract_payload({"data": bytearray(data), "target": b"scratch"})
    assert payload.image == data and payload.fields == {"target": b"scratch"}


@pytest.mark.parametrize(
    "row,match",
    [
        ({"body": {"image": "xx"}}, "JSON body has no 'data' field"),
        ({"body": {"data": [1, 2]}}, "'data' of the JSON body must be a base64 string, not list"),
        ({"body": {"data": "%%%not base64"}}, "'data' of the JSON body is not valid base64"),
        ({"body": "this is not base64!"}, "text body is not valid base64"),
        ({"body": bytearray(b'{"data": ')}, "looks like JSON but does not parse"),
        ({"body": [1, 2, 3]}, "must be an object with a 'data' field, not list"),
        ({"method": b"gradcam"}, "form has no 'data' field"),
        ({'{"data": "abc"}': b""}, "JSON was sent as a form"),
        ({"body": bytearray(b"data:image/png,\x89PNG\r\n")}, "body is neither an image file nor valid base64"),
        ({"body": bytearray(b"abcde")}, "body is neither an image file nor valid base64"),
        ({"body": bytearray(b'{"data": "", "top_k": ' + b"9" * 5000 + b"}")}, "number of thousands of digits"),
    ],
)
def test_payload_refusals_are_400(row, match):
    error = status_of(extract_payload, row)
    assert error.status == 400 and match in error.message


def test_decode_converts_modes_to_rgb():
    for mode in ("L", "RGBA", "P", "1", "CMYK", "LA"):
        image = Image.new(mode, (5, 4))
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
        decoded = decode_image(buffer.getvalue(), 10_000)
        assert decoded.mode == "RGB" and decoded.size == (5, 4)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    array = np.full((4, 4), 65535 // 2, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    decoded = np.asarray(decode_image(buffer.getvalue(), 10_000))
    assert abs(int(decoded[0, 0, 0]) - 128) <= 1


def test_transparent_pixels_become_white():
    decoded = decode_image(png_bytes("RGBA", color=(10, 20, 30, 0)), 10_000)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), 10_000).size == (10, 30)


def test_refusals_have_fitting_statuses():
    data = png_bytes(size=(300, 300))
    assert status_of(decode_image, b"", 10_000).status == 400
    assert status_of(decode_image, b"plain text, no image", 10_000).status == 415
    assert status_of(decode_image, data[: len(data) // 2], 10**6).status == 422
    too_big = status_of(decode_image, data, 300 * 300 - 1)
    assert too_big.status == 413 and "300x300 = 90000 pixels" in too_big.message
    # over Pillow's own bomb cap (twice Image.MAX_IMAGE_PIXELS) the message still states the model's cap
    side = (30_000).to_bytes(2, "little") * 2
    gif_header = b"GIF89a" + side + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + side + b"\x00\x02\x02\x44\x01\x00;"
    bomb = status_of(decode_image, gif_header, 40_000_000)
    assert bomb.status == 413 and bomb.message == "image is 900000000 pixels; this model accepts at most 40000000"
