"""The dashboard's static assets: present, loadable, self-contained (no CDN), safe to serve."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from orbitstream.dashboard.assets import content_type_for, index_html, load_asset

OWN_FILES = ("index.html", "app.js", "style.css")
VENDOR_FILES = ("vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE")
URL_RE = re.compile(r"https?://", re.IGNORECASE)
# Licence banners such as /*! https://github.com/leeoniya/uPlot (v1.6.32) */ load nothing.
BANNER_RE = re.compile(r"/\*!.*?\*/", re.DOTALL)

# Element ids that browser tests and the lead's wiring rely on.
HOOK_IDS = (
    "total-points",
    "total-anomalies",
    "ingest-rate",
    "anomaly-rate",
    "active-alerts-count",
    "last-updated",
    "status",
    "satellites",
    "active-alerts",
    "satellite-select",
    "chart-battery",
    "chart-storage",
    "chart-signal",
)


class _RefCollector(HTMLParser):
    """Collects every src/href of the page, plus all element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in ("src", "href"):
                self.refs.append((tag, value))
            elif key == "id":
                self.ids.add(value)


def _page() -> _RefCollector:
    parser = _RefCollector()
    parser.feed(index_html().decode("utf-8"))
    parser.close()
    return parser


def _asset_name(ref: str) -> str:
    """Map a URL used in index.html to the name load_asset expects."""
    name = ref.split("?", 1)[0].split("#", 1)[0]
    name = name.removeprefix("/").removeprefix("./")
    assert name.startswith("static/"), f"{ref!r} is not served from /static/"
    return name.removeprefix("static/")


def _text(name: str) -> str:
    asset = load_asset(name)
    assert asset is not None, name
    return asset[0].decode("utf-8")


def test_index_html_is_the_page() -> None:
    body = index_html()
    assert body.lstrip().lower().startswith(b"<!doctype html>")
    asset = load_asset("index.html")
    assert asset is not None
    assert asset[0] == body


def test_every_referenced_file_exists_and_loads() -> None:
    refs = [ref for _tag, ref in _page().refs if not ref.startswith("data:")]
    names = {_asset_name(ref) for ref in refs}
    # The page needs at least its own script and style plus uPlot's build and CSS.
    assert {"app.js", "style.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"} <= names
    for name in names:
        asset = load_asset(name)
        assert asset is not None, f"index.html references {name!r} which does not load"
        assert asset[0], f"{name!r} is empty"


def test_scripts_and_styles_referenced_with_matching_types() -> None:
    for tag, ref in _page().refs:
        if ref.startswith("data:"):
            continue
        asset = load_asset(_asset_name(ref))
        assert asset is not None
        if tag == "script":
            assert asset[1].startswith("text/javascript"), ref
        elif tag == "link" and ref.endswith(".css"):
            assert asset[1].startswith("text/css"), ref


@pytest.mark.parametrize("name", [*OWN_FILES, *VENDOR_FILES])
def test_shipped_file_loads(name: str) -> None:
    assert load_asset(name) is not None


@pytest.mark.parametrize("name", OWN_FILES)
def test_own_files_reference_no_remote_url(name: str) -> None:
    text = _text(name)
    assert not URL_RE.search(text), f"{name} references a remote URL"
    # Protocol-relative URLs would reach out too.
    assert not re.search(r"""(?:src|href)\s*=\s*["']//""", text, re.IGNORECASE)
    assert not re.search(r"""url\(\s*["']?//""", text, re.IGNORECASE)


@pytest.mark.parametrize("name", ["vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"])
def test_vendored_files_load_nothing_remote(name: str) -> None:
    text = BANNER_RE.sub("", _text(name))
    assert not URL_RE.search(text), f"{name} references a remote URL outside its banner"
    assert "@import" not in text


def test_page_fetches_only_relative_api_paths() -> None:
    js = _text("app.js")
    for url in re.findall(r"""["'`](/?api/[^"'`?]*)""", js):
        assert not url.startswith("/"), f"{url!r} should be relative so a path prefix works"
    assert "api/dashboard/summary" in js
    assert "api/dashboard/series" in js


def test_css_urls_are_local_or_data() -> None:
    for name in ("style.css", "vendor/uPlot.min.css"):
        for ref in re.findall(r"""url\(\s*["']?([^"')\s]+)""", _text(name)):
            if ref.startswith("data:"):
                continue
            base = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
            assert load_asset(base + ref) is not None, f"{name} uses missing {ref!r}"


def test_hook_ids_present() -> None:
    ids = _page().ids
    missing = [i for i in HOOK_IDS if i not in ids]
    assert not missing, f"index.html lacks ids {missing}"


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../assets.py",
        "../__init__.py",
        "../../dashboard/assets.py",
        "vendor/../index.html",
        "vendor/../../assets.py",
        "./index.html",
        "/index.html",
        "/etc/passwd",
        "\\index.html",
        "..\\assets.py",
        "C:/Windows/win.ini",
        "C:index.html",
        "index.html\x00",
        "vendor",
        "vendor/",
        "vendor//uPlot.min.css",
        ".hidden",
        "%2e%2e/assets.py",
        "no-such-file.js",
        "index.html/",
        "x" * 4096,
    ],
)
def test_unsafe_or_missing_names_return_none(name: str) -> None:
    assert load_asset(name) is None


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("index.html", "text/html"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("vendor/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uPlot.min.css", "text/css"),
        ("vendor/uPlot.LICENSE", "text/plain"),
    ],
)
def test_content_types(name: str, prefix: str) -> None:
    asset = load_asset(name)
    assert asset is not None
    assert asset[1].startswith(prefix)
    if prefix.startswith("text/"):
        assert "charset=utf-8" in asset[1]


def test_content_type_for_unknown_suffix() -> None:
    assert content_type_for("blob.bin") == "application/octet-stream"
    assert content_type_for("noext") == "application/octet-stream"
    assert content_type_for("logo.SVG") == "image/svg+xml"


def test_loads_are_cached() -> None:
    first = load_asset("app.js")
    second = load_asset("app.js")
    assert first is not None
    assert first is second


def test_vendored_uplot_matches_pinned_version() -> None:
    script = Path(__file__).resolve().parents[3] / "scripts" / "vendor-uplot.sh"
    assert script.is_file(), "scripts/vendor-uplot.sh pins the vendored version"
    pinned = re.search(r'UPLOT_VERSION="\$\{UPLOT_VERSION:-([0-9.]+)\}"', script.read_text())
    assert pinned is not None
    banner = _text("vendor/uPlot.iife.min.js")[:200]
    assert f"(v{pinned.group(1)})" in banner
    assert "MIT License" in _text("vendor/uPlot.LICENSE")
