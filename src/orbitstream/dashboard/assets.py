"""Static assets of the built-in dashboard, read from inside the installed package.

The HTTP layer maps ``GET /`` to :func:`index_html` and ``GET /static/<name>`` to
:func:`load_asset` (``None`` means 404). Nothing here does any I/O outside the
package's own ``static/`` folder: names are validated segment by segment, so ``..``,
absolute paths, backslashes, drive letters and hidden files are refused.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from threading import Lock
from typing import Final

__all__ = ["CONTENT_TYPES", "DEFAULT_CONTENT_TYPE", "content_type_for", "index_html", "load_asset"]

#: Content type by (lower-cased) file suffix; text types carry ``charset=utf-8``.
CONTENT_TYPES: Final[dict[str, str]] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
    ".license": "text/plain; charset=utf-8",
}
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"

_MAX_NAME_LENGTH: Final = 255

_cache: dict[str, tuple[bytes, str]] = {}
_cache_lock = Lock()


def content_type_for(name: str) -> str:
    """Return the content type served for ``name``, judged by its suffix."""
    dot = name.rfind(".")
    if dot < 0 or "/" in name[dot:]:
        return DEFAULT_CONTENT_TYPE
    return CONTENT_TYPES.get(name[dot:].lower(), DEFAULT_CONTENT_TYPE)


def _static_root() -> Traversable:
    return files("orbitstream.dashboard") / "static"


def _split_safe(name: str) -> list[str] | None:
    """Split a relative ``a/b/c`` name into segments, or ``None`` if it is unsafe."""
    if not name or len(name) > _MAX_NAME_LENGTH:
        return None
    if name.startswith("/") or "\\" in name or "\x00" in name or ":" in name:
        return None
    parts = name.split("/")
    for part in parts:
        # Empty ("a//b", trailing "/"), ".", ".." and hidden names are all refused.
        if not part or part.startswith("."):
            return None
    return parts


def _read(parts: list[str]) -> bytes | None:
    root = _static_root()
    node = root
    for part in parts:
        node = node / part
    if not node.is_file():
        return None
    # On a real file system, refuse anything that a symlink leads out of static/.
    if isinstance(root, Path) and isinstance(node, Path):
        try:
            if not node.resolve(strict=True).is_relative_to(root.resolve(strict=True)):
                return None
        except OSError:
            return None
    try:
        return node.read_bytes()
    except OSError:
        return None


def load_asset(name: str) -> tuple[bytes, str] | None:
    """Return ``(body, content_type)`` for ``name`` relative to ``static/``, else ``None``.

    ``name`` is the part of the URL path after ``/static/``, already percent-decoded,
    e.g. ``"app.js"`` or ``"vendor/uPlot.min.css"``. Found files are cached in memory
    for the life of the process (misses are not cached, so the cache stays bounded
    by the number of files shipped).
    """
    cached = _cache.get(name)
    if cached is not None:
        return cached
    parts = _split_safe(name)
    if parts is None:
        return None
    body = _read(parts)
    if body is None:
        return None
    entry = (body, content_type_for(parts[-1]))
    with _cache_lock:
        return _cache.setdefault(name, entry)


def index_html() -> bytes:
    """Return the dashboard page served at ``GET /``."""
    asset = load_asset("index.html")
    if asset is None:  # pragma: no cover - only if the package was built without it
        raise FileNotFoundError("orbitstream/dashboard/static/index.html is missing")
    return asset[0]
