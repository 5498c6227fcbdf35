"""Snakemake's HTML report as a user sees it: rendered by headless Chromium (the Debian package).

The report is a React page; `Report.view(category)` opens it on one category of results, the way
the menu does (`app.showCategory`), and `Report.show(path)` displays one image result, the way its
eye button does (`app.setView({content: "img", ...})`). Each view is read back twice from Chromium:
the DOM after the scripts ran, and a screenshot.
"""

import base64
import io
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium():
    """The browser; missing: a failure under CI (make test installs it), a skip elsewhere."""
    for name in BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    message = "headless Chromium not found (`make chromium` installs the Debian package)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {message}")
    pytest.skip(message)


class _Page(HTMLParser):
    """Visible text, <img> data URIs and <a download> links of a DOM dump."""

    def __init__(self):
        super().__init__()
        self.text, self.images, self.downloads, self._skip = [], [], {}, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "img" and (a.get("src") or "").startswith("data:"):
            self.images.append(a["src"])
        elif tag == "a" and a.get("download") and (a.get("href") or "").startswith("data:"):
            self.downloads[a["download"]] = a["href"]

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.text.append(data.strip())


def decode_data_uri(uri):
    return base64.b64decode(uri.split(",", 1)[1])


@dataclass
class View:
    name: str
    text: str  # the rendered page's visible text
    screenshot: Path
    image_sizes: list = field(default_factory=list)  # (w, h) of every displayed data-URI image
    downloads: dict = field(default_factory=dict)  # file name -> data URI of its link

    def download(self, name):
        """What the eye button of a non-image result (a CSV table) hands over."""
        links = [uri for file, uri in self.downloads.items() if Path(file).name == name]
        assert links, (name, sorted(self.downloads), self.text[:2000])
        return decode_data_uri(links[0]).decode()

    def assert_drawn(self, min_ink=0.01):
        """The content pane (right of the menu) of the screenshot is not blank: enough of its pixels
        differ from its background colour."""
        with Image.open(self.screenshot) as im:
            rgb = im.convert("RGB").crop((im.width * 2 // 5, 0, im.width, im.height))
        counts = sorted(rgb.getcolors(maxcolors=1 << 24), reverse=True)
        ink = 1 - counts[0][0] / (rgb.width * rgb.height)
        assert ink >= min_ink, f"{self.screenshot}: only {ink:.4f} of the content pane drawn"

    def assert_shows(self, png):
        """The image file `png` is on the screen, pixel for pixel (at its own size)."""
        import numpy as np

        with Image.open(png) as im:
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            want = np.asarray(Image.alpha_composite(white, im).convert("RGB"), dtype=np.int16)
        with Image.open(self.screenshot) as im:
            got = np.asarray(im.convert("RGB"), dtype=np.int16)
        h, w = want.shape[:2]
        H, W = got.shape[:2]
        assert h <= H and w <= W, f"{png} ({w}x{h}) does not fit the screenshot"

        def close(a, b):
            return (np.abs(a - b) <= 2).all(-1)

        # candidate places: where a few inked pixels of the image (not white) all match
        inked = np.argwhere((want < 250).any(-1))
        assert len(inked), f"{png} is blank"
        anchors = inked[np.linspace(0, len(inked) - 1, min(16, len(inked))).astype(int)]
        hits = np.ones((H - h + 1, W - w + 1), bool)
        for dy, dx in anchors:
            hits &= close(got[dy : dy + H - h + 1, dx : dx + W - w + 1], want[dy, dx])
        for y, x in zip(*np.nonzero(hits)):
            if close(got[y : y + h, x : x + w], want).all():
                return (int(x), int(y))
        raise AssertionError(f"{png} ({w}x{h}) is not on screen in {self.screenshot}")


class Report:
    def __init__(self, html, chromium, out_dir, size=(1600, 1000)):
        self.html, self.chromium, self.out, self.size = (
            Path(html).read_text(),
            chromium,
            out_dir,
            size,
        )

    def _chromium(self, page, *args):
        cmd = [
            "timeout",
            "-k",
            "10",
            "120",
            self.chromium,
            "--headless",
            "--no-sandbox",  # root in CI containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={self.out / 'chromium-profile'}",
            f"--window-size={self.size[0]},{self.size[1]}",
            "--virtual-time-budget=20000",  # let the page's scripts run to the end
            *args,
            page.as_uri(),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    def _render(self, script, name):
        page, shot = self.out / f"{name}.html", self.out / f"{name}.png"
        # after the report's own scripts: the same calls its menu and buttons make
        # (`app` exists once React has rendered the page the first time)
        hook = (
            "<script>const go = () => typeof app === 'undefined' ? setTimeout(go, 50) : "
            "(() => {{ {} }})(); window.addEventListener('load', go);</script>"
        )
        page.write_text(self._with(hook.format(script)))
        self._chromium(page, f"--screenshot={shot}")
        # the DOM as rendered, read without the report's scripts (their sources hold markup)
        dump = self.out / f"{name}-dom.html"
        strip = (
            "setTimeout(() => document.querySelectorAll('script').forEach(n => n.remove()), 500);"
        )
        dump.write_text(self._with(hook.format(script + strip)))
        parsed = _Page()
        parsed.feed(self._chromium(dump, "--dump-dom"))
        sizes = []
        for uri in parsed.images:
            if uri.startswith("data:image/png"):
                with Image.open(io.BytesIO(decode_data_uri(uri))) as im:
                    sizes.append(im.size)
        return View(name, "\n".join(parsed.text), shot, sizes, parsed.downloads)

    def _with(self, tag):
        """The report with `tag` before its closing </body> (the last one: scripts hold others)."""
        head, body, tail = self.html.rpartition("</body>")
        assert body, "no </body> in the report"
        return f"{head}{tag}\n{body}{tail}"

    def view(self, category, name):
        """The report opened on `category` (None: the landing page)."""
        script = "" if category is None else f"app.showCategory({category!r});"
        return self._render(script, name)

    def show(self, path, name):
        """One image result displayed, as its eye button displays it."""
        key = self._key(path)
        script = (
            f"app.setView({{content: 'img', contentPath: results[{key!r}].data_uri, "
            f"resultPath: {key!r}}});"
        )
        return self._render(script, name)

    def _key(self, path):
        assert f'"{path}"' in self.html, f"{path} is not a result of the report"
        return path
