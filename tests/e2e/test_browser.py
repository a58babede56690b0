"""/monitoring in a real browser: headless Debian Chromium renders Evidently's report of a drifted window.

Evidently's HTML is a JavaScript app (its tables and charts do not exist in the served HTML), so the checks read
what Chromium rendered: a screenshot that must show a page with charts, and the DOM after the scripts ran, whose
drift table must list every feature with its verdict. Chromium comes from the Debian package ``chromium``; a
missing browser fails the test (it never skips).
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from exporter.demo import CATEGORICAL, NUMERICAL, Traffic
from tests.e2e.stack import require_binary, send
from tests.helpers import InProcessServer, config_folder, flush, quiet, sample

pytestmark = pytest.mark.e2e

CHROMIUM = ("/usr/bin/chromium", "chromium")  # (path, Debian package)
WINDOW = 666
FEATURES = NUMERICAL + CATEGORICAL
SHIFTED = "bill_length_mm"  # the feature Traffic("shift") moves
WIDTH, HEIGHT = 1400, 1000


def chromium(url: str, profile: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    binary = require_binary(*CHROMIUM)
    argv = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
        f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=10000",
        *args, url,
    ]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')[-3000:]}"
    return proc


# ---------------------------------------------------------------------------------------------------------------
# PNG decoding (no Pillow here): 8-bit greyscale/RGB/RGBA, non-interlaced, as Chromium writes screenshots
# ---------------------------------------------------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """(width, height, pixels as tuples) of an 8-bit non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, idat = 8, {}, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IDAT":
            idat += body
        else:
            chunks[kind] = body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour)
    assert depth == 8 and channels and not interlace, f"unsupported PNG: depth {depth}, colour {colour}"
    raw, stride = zlib.decompress(idat), width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(line)
        prev = line
    pixels = [
        tuple(row[x:x + 3] if channels >= 3 else row[x:x + 1] * 3) for row in rows for x in range(0, stride, channels)
    ]
    return width, height, pixels


def test_decode_png_round_trip() -> None:
    """The decoder against a PNG built here with every filter type."""
    width, height = 3, 5
    pixels = [(x * 80, y * 50, (x + y) * 20) for y in range(height) for x in range(width)]
    raw = b""
    for y in range(height):
        line = bytes(v for x in range(width) for v in pixels[y * width + x])
        kind = y % 5
        prev = bytes(v for x in range(width) for v in pixels[(y - 1) * width + x]) if y else bytes(len(line))
        out = bytearray()
        for i, v in enumerate(line):
            a = line[i - 3] if i >= 3 else 0
            b = prev[i]
            c = prev[i - 3] if i >= 3 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = [0, a, b, (a + b) // 2, a if pa <= pb and pa <= pc else b if pb <= pc else c][kind]
            out.append((v - pred) & 0xFF)
        raw += bytes([kind]) + bytes(out)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert decode_png(png) == (width, height, pixels)


# ---------------------------------------------------------------------------------------------------------------
# The rendered drift table
# ---------------------------------------------------------------------------------------------------------------


class TableRows(HTMLParser):
    """Text of every cell of every <tr> (scripts and styles skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._skip:
            self._cell.append(data)


def drift_table(dom: str) -> dict[str, list[str]]:
    """Feature -> the cells of its row, for table rows whose first non-empty cell is a feature name."""
    parser = TableRows()
    parser.feed(dom)
    table: dict[str, list[str]] = {}
    for cells in parser.rows:
        texts = [c for c in cells if c]
        if texts and texts[0] in FEATURES:
            table[texts[0]] = texts
    return table


def test_monitoring_page_renders_the_drift_report_in_chromium(demo_dir: Path, tmp_path: Path) -> None:
    require_binary(*CHROMIUM)
    # The app in process behind a real loopback port (Chromium needs a URL, not a process of the service's own);
    # the drift job run once, by the test, over the whole window. interval_seconds stays 1: it sets the
    # calibrated per-run false-flag probability, hence the verdicts the table must show.
    config = config_folder(
        demo_dir, tmp_path / "app", database_url="sqlite:///predictions.db",
        **quiet(drift={"window_size": WINDOW, "min_rows": 100, "interval_seconds": 1, "report": True}),
    )
    with InProcessServer(config) as server:
        answered = send(server, Traffic("shift", seed=31), WINDOW)  # type: ignore[arg-type]
        flush(server)
        server.app.state.job.tick()
        metrics = server.metrics()
        assert sample(metrics, "model_drift_window_rows") == len(answered) == WINDOW
        assert sample(metrics, "model_drift_job_failures_total") == 0
        assert sample(metrics, "model_feature_drift_detected", feature=SHIFTED) == 1
        page = httpx.get(f"{server.url}/monitoring", timeout=30)
        assert page.status_code == 200 and "No drift report yet" not in page.text, page.text[:500]

        screenshot = tmp_path / "monitoring.png"
        chromium(f"{server.url}/monitoring", tmp_path / "profile-shot", f"--screenshot={screenshot}")
        dom = chromium(f"{server.url}/monitoring", tmp_path / "profile-dom", "--dump-dom").stdout.decode()

    # The screenshot shows a page with text and charts, not a blank or near-blank one.
    assert screenshot.is_file(), "chromium wrote no screenshot"
    width, height, pixels = decode_png(screenshot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    colours = set(pixels)
    non_white = sum(1 for p in pixels if min(p) < 240) / len(pixels)
    saturated = sum(1 for p in pixels if max(p) - min(p) > 100) / len(pixels)  # chart bars, not grey text
    assert len(colours) >= 100, f"only {len(colours)} colours: blank page? ({screenshot})"
    assert non_white >= 0.03, f"{non_white:.1%} non-white pixels: blank page? ({screenshot})"
    assert saturated >= 0.002, f"{saturated:.2%} coloured pixels: charts not drawn? ({screenshot})"

    # The drift table, as rendered by the report's scripts: every feature, with the verdict of this window.
    table = drift_table(dom)
    assert set(table) == set(FEATURES), f"features in the rendered drift table: {sorted(table)}"
    verdicts = {f: ("Detected" in cells) - ("Not Detected" in cells) for f, cells in table.items()}
    assert verdicts == {f: 1 if f == SHIFTED else -1 for f in FEATURES}, table
