"""Images that cost far more to decode than their size suggests, and quick large test images.

Shared by tests/test_decode_limits.py and tests/integration/test_decode_bombs.py.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EOB_RUN = 32767  # blocks skipped by one EOB14 symbol with all 14 extra bits set


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    """``image`` saved in ``fmt`` as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a little tiled noise, uint8 H x W x channels: quick to make, compresses well."""
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    noise = np.random.default_rng(seed).random((64, 64), dtype=np.float32) * 0.06
    tiled = np.tile(noise, (-(-height // 64), -(-width // 64)))[:height, :width]
    weights = [(0.8, 0.2), (0.0, 0.9), (0.45, 0.45), (-0.7, 0.0)]
    out = np.empty((height, width, channels), dtype=np.uint8)
    for channel, (wx, wy) in enumerate(weights[:channels]):
        plane = x * wx + y * wy + tiled + (1.0 if wx < 0 else 0.0)
        out[..., channel] = np.clip(plane * 255.0, 0, 255)
    return out


def _stuff(bits: str) -> bytes:
    """Entropy-coded bytes of a bit string: padded with 1-bits, every 0xFF followed by a stuffed 0x00."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i : i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0x00)
    return bytes(out)


def scan_bomb(width: int, height: int, extra_scans: int) -> bytes:
    """A valid progressive JPEG followed by ``extra_scans`` tiny AC scans of its luma component.

    Each extra scan is a few dozen bytes (EOB runs of 32767 blocks) but makes libjpeg walk the
    whole coefficient buffer once, so decoding costs about ``extra_scans`` passes over the image.
    """
    base = encode(Image.fromarray(gradient(width, height)), "JPEG", quality=80, progressive=True)
    assert base.endswith(b"\xff\xd9")
    blocks = -(-width // 8) * -(-height // 8)  # luma blocks (upper bound, whatever the subsampling)
    # AC table 3 with one code, '0', for symbol 0xE0 (EOB run of 2**14 + 14 extra bits).
    table = b"\x13" + bytes([1] + [0] * 15) + b"\xe0"
    dht = b"\xff\xc4" + struct.pack(">H", 2 + len(table)) + table
    # Scan of component 1 (luma), DC table 0, AC table 3, spectral band 1..63, no approximation.
    sos = b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x03\x01\x3f\x00"
    data = _stuff(("0" + "1" * 14) * -(-blocks // EOB_RUN))
    return base[:-2] + dht + (sos + data) * extra_scans + b"\xff\xd9"


def many_segments_jpeg(segments: int) -> bytes:
    """A small JPEG with ``segments`` empty COM segments before its frame header."""
    base = encode(Image.fromarray(gradient(32, 32)), "JPEG")
    return base[:2] + b"\xff\xfe\x00\x02" * segments + base[2:]


# ru_maxrss survives fork and exec (a child starts with its parent's peak), so the child resets
# its own high-water mark through /proc/self/clear_refs and reads VmHWM before and after.
MEASURE = """
import importlib.util, json, sys
def peak_kb():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
spec = importlib.util.spec_from_file_location("handlers.serving._measured_decode", sys.argv[1])
module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
data = open(sys.argv[2], "rb").read()
kwargs = json.loads(sys.argv[3])
if "reduce_to" in kwargs:
    kwargs["reduce_to"] = tuple(kwargs["reduce_to"])
if "limits" in kwargs:
    kwargs["limits"] = module.DecodeLimits(**kwargs["limits"])
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = peak_kb()
image = module.decode_image(data, 40_000_000, **kwargs)
after = peak_kb()
print(json.dumps({"extra_mb": (after - before) / 1024, "size": image.size, "mode": image.mode}))
"""


def peak_decode_memory(path: Path, module: Path, **kwargs: object) -> dict:
    """Decode the file at ``path`` in a fresh interpreter with the decode module at ``module``.

    The module is loaded as part of ``handlers.serving`` (so HEAD's copy in a temp file works too).
    Returns {"extra_mb": growth of the peak resident set (VmHWM) during decode_image, "size", "mode"}.
    """
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(module), str(path), json.dumps(kwargs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout)
