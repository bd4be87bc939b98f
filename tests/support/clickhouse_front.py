"""A small ClickHouse HTTP interface served from chDB, for testing HTTP clients end to end.

No ClickHouse server can be installed on our machines; chDB is ClickHouse's own engine
in-process. :class:`ClickHouseFront` puts it behind a real socket
(``ThreadingHTTPServer`` on a free port, one thread per connection) and speaks enough of
the HTTP interface for clickhouse-connect's ``command``, ``query``, ``query_arrow``,
``insert`` (Native), ``insert_arrow``, ``raw_*`` and ``ping``:

1. ``INSERT … FORMAT X <data>`` and ``INSERT … VALUES <data>`` are split here and the data
   is streamed through ``conn.send_insert(...)``, never inlined through ``query()``
   (chDB ends inline data at the first blank line). The data starts where the server's
   parser says: after the format name, spaces/tabs, then at most one ``\\r\\n``.
2. The SQL is the ``query`` URL parameter, a newline and the body, as on the server.
   Bodies are decoded by ``Content-Encoding`` (``gzip``, ``deflate``, ``zstd``, ``lz4`` with
   any number of frames — clickhouse-connect sends one per block) and by
   ``Transfer-Encoding: chunked``.
3. URL parameters that are settings become ``SET`` statements before the query; outside a
   session each request gets a fresh chDB connection (a fresh session context, as on the
   server), inside a ``session_id`` the session's connection is used and the settings and
   current database are restored afterwards. ``param_<name>`` are server-side query
   parameters. ``GET`` requests run with ``readonly=2``.
4. Responses carry ``X-ClickHouse-Summary``, ``X-ClickHouse-Query-Id``,
   ``X-ClickHouse-Format`` (only for statements that return rows),
   ``X-ClickHouse-Timezone`` and ``X-ClickHouse-Server-Display-Name``; results are
   compressed when ``enable_http_compression=1`` and ``Accept-Encoding`` allow it.
5. Errors look like the server's: body ``Code: N. DB::Exception: … (NAME) (version …)``,
   header ``X-ClickHouse-Exception-Code: N``, HTTP status from the code with the server's
   own table (400 parse/syntax/type, 404 unknown table/database/setting, 403 auth, 408
   timeout, 501 not implemented, 503 socket timeout, 500 otherwise).
6. ``GET /ping`` (and ``GET /`` without a query) answer ``Ok.\\n``; several statements in
   one request are refused (chDB would run them all).

Fault injection for tests: :meth:`ClickHouseFront.fail_next` (an HTTP status without
touching the store), :meth:`~ClickHouseFront.fail_next_with_code` (a ClickHouse error),
:meth:`~ClickHouseFront.delay_next` (answer late; the statement still runs, as on a server
whose client timed out) and :attr:`~ClickHouseFront.down` (connections are dropped without
an answer). :attr:`~ClickHouseFront.requests` records what clients sent.

What it cannot reproduce (tests must not rely on these): real asynchronous inserts
(``async_insert=1`` is accepted and does nothing in chDB), results streamed while the
query runs (with progress headers and exceptions in the middle of a body: here every
answer is buffered), query cancellation and ``KILL QUERY``, concurrency and quota limits
(``TOO_MANY_SIMULTANEOUS_QUERIES`` only by injection), ``Replicated*`` engines, clusters
and ``ON CLUSTER``, users, roles and grants (one user table, checked by password only),
``multipart/form-data`` requests (external data, form-encoded parameters), ClickHouse's
own block compression (the ``compress``/``decompress`` URL parameters are refused with
NOT_IMPLEMENTED; clickhouse-connect 1.12 uses HTTP ``Content-Encoding`` instead), the
``client_protocol_version`` Native revision (clickhouse-connect detects this and falls
back), exact ``result_rows`` in the summary, and ``readonly`` passed as a URL setting
inside a session (run on a temporary connection, so session temporary tables are not
visible to such a query). A chDB data directory belongs to one process, and a process can
hold one data directory at a time: stop the front before opening another chDB path.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import logging
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["ClickHouseFront", "FrontError", "RequestRecord", "split_insert"]

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = frozenset(" \t\n\r\f\v")
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\.")
_ROW_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
# URL parameters of the HTTP interface that are not settings.
_HTTP_PARAMS = frozenset(
    [
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
    ]
)
# The server's exception -> HTTP status table (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp).
_STATUS_NAMES = {
    401: "REQUIRED_PASSWORD",
    403: "UNKNOWN_USER WRONG_PASSWORD AUTHENTICATION_FAILED SET_NON_GRANTED_ROLE ACCESS_DENIED",
    400: "BAD_ARGUMENTS CANNOT_COMPILE_REGEXP CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE "
    "CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER "
    "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 CANNOT_PARSE_IPV6 "
    "CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID DUPLICATE_COLUMN ILLEGAL_COLUMN "
    "UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE THERE_IS_NO_COLUMN TOO_DEEP_AST TOO_BIG_AST "
    "UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH "
    "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    404: "UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE "
    "UNKNOWN_DATABASE UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION "
    "UNKNOWN_FORMAT UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE",
    413: "QUERY_IS_TOO_LARGE",
    501: "NOT_IMPLEMENTED",
    503: "SOCKET_TIMEOUT CANNOT_OPEN_FILE CANNOT_SCHEDULE_TASK",
    411: "HTTP_LENGTH_REQUIRED",
    408: "TIMEOUT_EXCEEDED",
    415: "UNSUPPORTED_MEDIA_TYPE",
}
_STATUS_BY_NAME = {
    name: status for status, names in _STATUS_NAMES.items() for name in names.split()
}
# Codes the front raises itself (names come from chDB's errorCodeToName at start).
SYNTAX_ERROR = 62
UNKNOWN_SETTING = 115
NOT_IMPLEMENTED = 48
BAD_ARGUMENTS = 36
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
AUTHENTICATION_FAILED = 516
STD_EXCEPTION = 1001


class FrontError(Exception):
    """A ClickHouse error the front answers with (``code`` is the ClickHouse code)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- SQL scanning --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # word | quoted (identifier) | string | punct
    start: int
    end: int
    text: str


def _end_of_quoted(text: str, i: int, quote: str) -> int:
    n = len(text)
    j = i + 1
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == quote:
            if j + 1 < n and text[j + 1] == quote:  # doubled quote
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _tokens(text: str, start: int = 0) -> Iterator[_Token]:
    """Tokens of ClickHouse SQL, skipping whitespace and comments (lazily: callers stop
    before the data of an INSERT)."""
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if c in _SPACE:
            i += 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`":
            j = _end_of_quoted(text, i, c)
            yield _Token("string" if c == "'" else "quoted", i, j, text[i:j])
            i = j
        else:
            m = _WORD.match(text, i)
            if m:
                yield _Token("word", i, m.end(), m.group())
                i = m.end()
            else:
                yield _Token("punct", i, i + 1, c)
                i += 1


def _unquote(token: _Token) -> str:
    if token.kind == "quoted":
        return token.text[1:-1].replace(token.text[0] * 2, token.text[0])
    return token.text


@dataclass(frozen=True, slots=True)
class InsertSplit:
    """``INSERT`` statement (without ``FORMAT``), its input format, where the data starts."""

    head_end: int
    format: str
    data_start: int


def split_insert(text: str) -> InsertSplit | None:
    """Split ``INSERT … FORMAT X <data>`` / ``INSERT … VALUES <data>``.

    ``text`` is the request decoded as latin-1 (so offsets are byte offsets). ``None`` for
    any other statement, including ``INSERT … SELECT``.
    """
    tokens = _tokens(text)
    first = next(tokens, None)
    if first is None or first.kind != "word" or first.text.upper() != "INSERT":
        return None
    depth = 0
    n = len(text)
    for tok in tokens:
        if tok.kind == "punct":
            if tok.text in "([":
                depth += 1
            elif tok.text in ")]":
                depth -= 1
            elif tok.text == ";" and depth == 0:
                return None
            continue
        if depth or tok.kind != "word":
            continue
        word = tok.text.upper()
        if word in ("SELECT", "WITH"):
            return None
        if word == "VALUES":
            return InsertSplit(tok.start, "Values", tok.end)
        if word == "FORMAT":
            name = next(tokens, None)
            if name is None or name.kind not in ("word", "quoted"):
                raise FrontError(SYNTAX_ERROR, "Syntax error: expected a format name after FORMAT")
            i = name.end
            while i < n and text[i] in " \t\f":
                i += 1
            if i < n and text[i] == ";":
                raise FrontError(
                    SYNTAX_ERROR,
                    "You have excessive ';' symbol before data for INSERT. Note that there is "
                    "no ';' just after format name, you need to put at least one whitespace "
                    "symbol before the data",
                )
            if i < n and text[i] == "\r":
                i += 1
            if i < n and text[i] == "\n":
                i += 1
            return InsertSplit(tok.start, _unquote(name), i)
    return None


def _check_single_statement(text: str) -> None:
    seen_semicolon = -1
    for tok in _tokens(text):
        if seen_semicolon >= 0:
            raise FrontError(
                SYNTAX_ERROR,
                f"Syntax error (Multi-statements are not allowed): failed at position "
                f"{seen_semicolon + 1} (end of query): {text[seen_semicolon : seen_semicolon + 40]!r}",
            )
        if tok.kind == "punct" and tok.text == ";":
            seen_semicolon = tok.start


def _statement_kind(text: str) -> str:
    tok = next(_tokens(text), None)
    if tok is None:
        return ""
    if tok.kind == "punct" and tok.text == "(":
        return "SELECT"
    return tok.text.upper() if tok.kind == "word" else ""


def _output_format(text: str) -> str | None:
    """The last top-level ``FORMAT name`` of a statement, if any."""
    found: str | None = None
    depth = 0
    tokens = list(_tokens(text))
    for i, tok in enumerate(tokens):
        if tok.kind == "punct":
            depth += tok.text in "(["
            depth -= tok.text in ")]"
        elif depth == 0 and tok.kind == "word" and tok.text.upper() == "FORMAT":
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and nxt.kind in ("word", "quoted"):
                found = _unquote(nxt)
    return found


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(value: str) -> str:
    return "`" + value.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _num(value: Any) -> int:
    value = value() if callable(value) else value
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


# -- bodies ------------------------------------------------------------------------------------
def _lz4_frames(data: bytes) -> bytes:
    import lz4.frame  # type: ignore[import-untyped]

    out: list[bytes] = []
    rest = data
    while rest:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out.append(decompressor.decompress(rest))
        if not decompressor.eof:
            raise FrontError(CANNOT_DECOMPRESS, "Unexpected end of LZ4 frame")
        rest = decompressor.unused_data
    return b"".join(out)


def _zstd_module() -> Any:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        try:
            from backports import zstd
        except ImportError:
            return None
    return zstd


def _decode_body(data: bytes, encoding: str) -> bytes:
    for enc in reversed([e.strip().lower() for e in encoding.split(",") if e.strip()]):
        try:
            if enc in ("identity", "none"):
                continue
            if enc in ("gzip", "x-gzip"):
                data = gzip.decompress(data)
            elif enc == "deflate":
                try:
                    data = zlib.decompress(data)
                except zlib.error:
                    data = zlib.decompress(data, -15)
            elif enc == "lz4":
                data = _lz4_frames(data)
            elif enc == "zstd":
                zstd = _zstd_module()
                if zstd is None:
                    raise FrontError(NOT_IMPLEMENTED, "zstd is not available in the test front")
                data = zstd.decompress(data)
            else:
                raise FrontError(BAD_ARGUMENTS, f"Unknown HTTP Content-Encoding: {enc}")
        except FrontError:
            raise
        except Exception as exc:
            raise FrontError(CANNOT_DECOMPRESS, f"Cannot decompress {enc} body: {exc}") from exc
    return data


def _encode_body(data: bytes, accept: str) -> tuple[bytes, str | None]:
    for enc in (e.split(";")[0].strip().lower() for e in accept.split(",")):
        if enc == "lz4":
            import lz4.frame

            return lz4.frame.compress(data), "lz4"
        if enc == "gzip":
            return gzip.compress(data), "gzip"
        if enc == "deflate":
            return zlib.compress(data), "deflate"
        if enc == "zstd" and (zstd := _zstd_module()) is not None:
            return bytes(zstd.compress(data)), "zstd"
    return data, None


def _content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    low = fmt.lower()
    if low.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if low.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if low.startswith("json") or low.startswith("ndjson"):
        return "application/json; charset=UTF-8"
    if low.startswith(("pretty", "vertical", "markdown")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


# -- front state -------------------------------------------------------------------------------
@dataclass(slots=True)
class _Fault:
    kind: str  # status | code | delay
    remaining: int
    status: int = 503
    code: int | None = None
    message: str | None = None
    delay_secs: float = 0.0
    match: re.Pattern[str] | None = None


@dataclass(slots=True)
class RequestRecord:
    """One request as the front saw it (credentials removed)."""

    method: str
    path: str
    params: dict[str, str]
    query: str
    status: int = 0
    code: int | None = None
    written_rows: int = 0
    injected: str | None = None
    content_encoding: str | None = None
    response_encoding: str | None = None
    data_bytes: int = 0  # INSERT data after the statement (decompressed)
    data_has_blank_line: bool = False  # ``\n\n`` in it: chDB's inline path would cut there


@dataclass(slots=True)
class _Session:
    conn: Any
    timeout_secs: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    record_code: int | None = None
    written_rows: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], front: ClickHouseFront) -> None:
        self.front = front
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("Front connection error.", exc_info=True)

    def drop_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse"
    timeout = 30  # idle keep-alive connections end after this
    server: _Server

    def do_GET(self) -> None:
        self.server.front._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.front._serve(self, "POST")

    def do_HEAD(self) -> None:
        self.server.front._serve(self, "HEAD")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Front request.", extra={"line": format % args})

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed during a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def answer(self, answer: _Answer, head_only: bool = False) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Keep-Alive", f"timeout={self.timeout}")
        self.end_headers()
        if not head_only:
            self.wfile.write(answer.body)


class ClickHouseFront:
    """ClickHouse's HTTP interface over a chDB data directory, on a real socket.

    :param data_dir: chDB data directory (created; one per process at a time).
    :param users: user -> password accepted (default: ``default`` without password).
    :param port: ``0`` picks a free port.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        users: Mapping[str, str] | None = None,
        display_name: str = "orbitstream-chdb-front",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self._port = port
        self.users = dict(users) if users is not None else {"default": ""}
        self.display_name = display_name
        self.requests: list[RequestRecord] = []
        self.down = False
        self.version = ""
        self.timezone = "UTC"
        self._faults: list[_Fault] = []
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._names: dict[int, str] = {}
        self._http_compression_default = "0"
        self._anchor: Any = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("front is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ClickHouseFront:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._anchor = _connect(self.data_dir)  # keeps the engine up between requests
        try:
            line = self._anchor.query("SELECT version(), timezone()", "TSV").bytes().decode()
            self.version, self.timezone = line.strip().split("\t")
            names = self._anchor.query(
                "SELECT number, errorCodeToName(number) FROM numbers(2000) "
                "WHERE errorCodeToName(number) != ''",
                "JSONCompact",
            ).bytes()
            self._names = {int(c): str(n) for c, n in json.loads(names)["data"]}
            self._http_compression_default = _scalar(
                self._anchor, "SELECT getSetting('enable_http_compression')"
            )
            self._server = _Server((self.host, self._port), self)
        except BaseException:
            self._anchor.close()
            self._anchor = None
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"clickhouse-front-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections, close every chDB connection."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.drop_connections()
            server.server_close()  # joins the connection threads
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            with session.lock:
                session.conn.close()
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None

    def __enter__(self) -> ClickHouseFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault injection -------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 503, *, match: str | None = None) -> None:
        """Answer the next ``n`` requests (whose SQL matches ``match``, a regex, if given)
        with ``status`` and no ClickHouse code, without touching the store."""
        self._add_fault(_Fault("status", n, status=status, match=_pattern(match)))

    def fail_next_with_code(
        self,
        n: int = 1,
        code: int = 252,
        status: int = 500,
        *,
        message: str | None = None,
        match: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests with ClickHouse error ``code`` (store untouched)."""
        self._add_fault(
            _Fault("code", n, status=status, code=code, message=message, match=_pattern(match))
        )

    def delay_next(self, n: int = 1, secs: float = 1.0, *, match: str | None = None) -> None:
        """Hold the next ``n`` requests for ``secs`` before running them (they still run)."""
        self._add_fault(_Fault("delay", n, delay_secs=secs, match=_pattern(match)))

    def reset(self) -> None:
        """Forget injected faults and recorded requests; come back up."""
        with self._lock:
            self._faults.clear()
            self.requests.clear()
        self.down = False

    def _add_fault(self, fault: _Fault) -> None:
        if fault.remaining > 0:
            with self._lock:
                self._faults.append(fault)

    def _take_fault(self, sql: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.match is None or fault.match.search(sql):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- errors ----------------------------------------------------------------------------
    def error_name(self, code: int) -> str:
        return self._names.get(code, "UNKNOWN_EXCEPTION")

    def status_for(self, code: int) -> int:
        return _STATUS_BY_NAME.get(self.error_name(code), 500)

    def _error_text(self, code: int, message: str) -> str:
        message = message.strip()
        cut = message.find("Stack trace")
        if cut > 0:
            message = message[:cut].rstrip(": \n")
        start = message.find("Code: ")
        if start >= 0:
            text = message[start:]
        else:
            text = f"Code: {code}. DB::Exception: {message.rstrip('.')}. ({self.error_name(code)})"
        if "(version " not in text:
            text += f" (version {self.version})"
        return text + "\n"

    def _error(self, code: int, message: str, status: int | None = None) -> _Answer:
        return _Answer(
            status if status is not None else self.status_for(code),
            self._error_text(code, message).encode(),
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(code),
                "X-ClickHouse-Server-Display-Name": self.display_name,
                "X-ClickHouse-Timezone": self.timezone,
            },
            record_code=code,
        )

    def _from_chdb(self, exc: BaseException) -> FrontError:
        text = str(exc)
        m = _CODE.search(text)
        return FrontError(int(m.group(1)) if m else STD_EXCEPTION, text)

    # -- HTTP --------------------------------------------------------------------------------
    def _serve(self, handler: _Handler, method: str) -> None:
        parts = urlsplit(handler.path)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        params = dict(pairs)
        if self.down:
            handler.abort()
            return
        path = parts.path.rstrip("/") or "/"
        record = RequestRecord(
            method, path, {k: v for k, v in params.items() if k != "password"}, ""
        )
        if path == "/ping" or (path == "/" and method in ("GET", "HEAD") and "query" not in params):
            answer = _Answer(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        elif path != "/":
            handler.read_body()
            answer = _Answer(
                404,
                f"There is no handle {parts.path}\n\nUse / or /ping for health checks.\n".encode(),
                {"Content-Type": "text/plain; charset=UTF-8"},
            )
        else:
            try:
                answer = self._query(handler, method, pairs, params, record)
            except FrontError as exc:
                answer = self._error(exc.code, exc.message)
                answer.headers["X-ClickHouse-Query-Id"] = params.get("query_id") or str(
                    uuid.uuid4()
                )
            except (ConnectionError, TimeoutError, OSError):
                handler.abort()
                return
            except Exception as exc:  # a bug here must still answer like a server
                logger.exception("Front failed.")
                answer = self._error(STD_EXCEPTION, f"{type(exc).__name__}: {exc}")
        record.status = answer.status
        record.code = answer.record_code
        record.written_rows = answer.written_rows
        if path != "/ping":
            with self._lock:
                self.requests.append(record)
        if self.down:  # went down while this request ran
            handler.abort()
            return
        try:
            handler.answer(answer, head_only=method == "HEAD")
        except OSError:
            handler.close_connection = True

    def _authenticate(self, handler: _Handler, params: Mapping[str, str]) -> str:
        user = handler.headers.get("X-ClickHouse-User")
        password = handler.headers.get("X-ClickHouse-Key")
        auth = handler.headers.get("Authorization", "")
        if user is None and auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
        if user is None:
            user = params.get("user", "default")
            password = params.get("password", "")
        if self.users.get(user) != (password or ""):
            raise FrontError(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user "
                "with such name",
            )
        return user

    def _query(
        self,
        handler: _Handler,
        method: str,
        pairs: list[tuple[str, str]],
        params: dict[str, str],
        record: RequestRecord,
    ) -> _Answer:
        try:
            self._authenticate(handler, params)
        finally:
            body = handler.read_body() if method == "POST" else b""
        if params.get("compress", "0") not in ("0", "false", "") or params.get(
            "decompress", "0"
        ) not in ("0", "false", ""):
            raise FrontError(
                NOT_IMPLEMENTED,
                "ClickHouse block compression (compress/decompress URL parameters) is not "
                "supported by the test front: use HTTP Content-Encoding",
            )
        if "multipart/form-data" in handler.headers.get("Content-Type", ""):
            raise FrontError(
                NOT_IMPLEMENTED, "multipart/form-data is not supported by the test front"
            )
        encoding = handler.headers.get("Content-Encoding")
        record.content_encoding = encoding
        if encoding:
            body = _decode_body(body, encoding)
        query_param = params.get("query", "")
        if query_param and body:
            raw = query_param.encode() + b"\n" + body
        else:
            raw = query_param.encode() or body
        if not raw.strip():
            raise FrontError(SYNTAX_ERROR, "Empty query")
        text = raw.decode("latin-1")
        split = split_insert(text)
        sql_end = split.data_start if split is not None else len(raw)
        record.query = raw[: min(sql_end, 2000)].decode("utf-8", "replace")
        if split is not None:
            record.data_bytes = len(raw) - split.data_start
            record.data_has_blank_line = raw.find(b"\n\n", split.data_start) >= 0

        fault = self._take_fault(record.query)
        if fault is not None:
            record.injected = fault.kind
            if fault.kind == "status":
                return _Answer(
                    fault.status,
                    f"Injected HTTP {fault.status} (test front)\n".encode(),
                    {"Content-Type": "text/plain; charset=UTF-8"},
                )
            if fault.kind == "code":
                assert fault.code is not None
                name = self.error_name(fault.code)
                return self._error(
                    fault.code,
                    fault.message or f"Injected {name} by the test front",
                    fault.status,
                )
            time.sleep(fault.delay_secs)

        settings: dict[str, str] = {}
        query_params: dict[str, str] = {}
        for key, value in pairs:
            if key.startswith("param_"):
                query_params[key[6:]] = value
            elif key not in _HTTP_PARAMS:
                if not _SETTING_NAME.match(key):
                    raise FrontError(UNKNOWN_SETTING, f"Unknown setting '{key}'")
                settings[key] = value
        if method in ("GET", "HEAD") and settings.get("readonly", "0") in ("0", ""):
            settings["readonly"] = "2"
        database = params.get("database") or None
        started = time.perf_counter_ns()

        with self._connection(params, settings) as conn:
            if split is not None:
                head = raw[: split.head_end].decode("utf-8").rstrip()
                written = self._insert(
                    conn, head, split.format, raw[split.data_start :], database, settings
                )
                summary = _summary(written, 0, written, 0, time.perf_counter_ns() - started)
                return _Answer(
                    200, b"", self._ok_headers(params, summary, None), written_rows=written
                )
            _check_single_statement(text)
            sql = raw.decode("utf-8")
            kind = _statement_kind(text)
            fmt = _output_format(text) or params.get("default_format") or "TabSeparated"
            result = self._run(conn, sql, fmt, query_params, database, settings)
        data = bytes(result.bytes())
        summary = _summary(
            _num(result.rows_read),
            _num(result.bytes_read),
            _num(getattr(result, "rows_written", 0)),
            _num(getattr(result, "bytes_written", 0)),
            time.perf_counter_ns() - started,
            result_bytes=len(data),
        )
        returns_rows = kind in _ROW_STATEMENTS
        headers = self._ok_headers(params, summary, fmt if returns_rows else None)
        compression = params.get("enable_http_compression", self._http_compression_default)
        if data and compression.lower() in ("1", "true"):
            data, used = _encode_body(data, handler.headers.get("Accept-Encoding", ""))
            if used:
                headers["Content-Encoding"] = used
                record.response_encoding = used
        return _Answer(200, data, headers)

    def _ok_headers(
        self, params: Mapping[str, str], summary: str, fmt: str | None
    ) -> dict[str, str]:
        headers = {
            "Content-Type": _content_type(fmt),
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Query-Id": params.get("query_id") or str(uuid.uuid4()),
            "X-ClickHouse-Timezone": self.timezone,
            "X-ClickHouse-Summary": summary,
        }
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
        return headers

    # -- chDB ------------------------------------------------------------------------------------
    def _connection(self, params: Mapping[str, str], settings: Mapping[str, str]) -> _Lease:
        session_id = params.get("session_id")
        if not session_id:
            return _Lease(_connect(self.data_dir), owned=True)
        timeout = float(params.get("session_timeout") or 60)
        now = time.monotonic()
        expired: list[_Session] = []
        with self._lock:
            for sid, sess in list(self._sessions.items()):
                if now - sess.last_used > sess.timeout_secs and not sess.lock.locked():
                    expired.append(self._sessions.pop(sid))
            session = self._sessions.get(session_id)
            if session is None:
                if params.get("session_check", "0") in ("1", "true"):
                    raise FrontError(SESSION_NOT_FOUND, f"Session {session_id} not found")
                session = _Session(_connect(self.data_dir), timeout)
                self._sessions[session_id] = session
        for old in expired:
            old.conn.close()
        if not session.lock.acquire(blocking=False):
            raise FrontError(
                SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client"
            )
        session.last_used = now
        session.timeout_secs = timeout
        if settings.get("readonly", "0") in ("0", ""):
            return _Lease(session.conn, owned=False, release=session.lock)
        # readonly cannot be lifted again on the session's connection: use a temporary one
        try:
            current = _scalar(session.conn, "SELECT currentDatabase()")
            temp = _connect(self.data_dir)
        except Exception as exc:
            session.lock.release()
            raise self._from_chdb(exc) from exc
        lease = _Lease(temp, owned=True, release=session.lock)
        try:
            temp.query(f"USE {_ident(current)}")
        except Exception as exc:
            lease.__exit__(None, None, None)
            raise self._from_chdb(exc) from exc
        return lease

    def _prepare(
        self, conn: Any, database: str | None, settings: Mapping[str, str], restore: bool
    ) -> list[str]:
        """USE + SET on ``conn``; returns the statements that undo them (for sessions)."""
        undo: list[str] = []
        try:
            if restore and (database or settings):
                if database:
                    undo.append(f"USE {_ident(_scalar(conn, 'SELECT currentDatabase()'))}")
                if settings:
                    names = ", ".join(_quote(k) for k in settings)
                    doc = json.loads(
                        conn.query(
                            f"SELECT name, value FROM system.settings WHERE name IN ({names})",
                            "JSONCompact",
                        ).bytes()
                    )
                    old = ", ".join(f"{n} = {_quote(str(v))}" for n, v in doc["data"])
                    if old:
                        undo.append(f"SET {old}")
            if database:
                conn.query(f"USE {_ident(database)}")
            others = {k: v for k, v in settings.items() if k != "readonly"}
            if others:
                conn.query("SET " + ", ".join(f"{k} = {_quote(v)}" for k, v in others.items()))
            if "readonly" in settings:
                # the server checks URL settings against the user's profile, so readonly
                # given with other settings in one request takes effect after them
                conn.query(f"SET readonly = {_quote(settings['readonly'])}")
        except Exception as exc:
            _undo(conn, undo)
            raise self._from_chdb(exc) from exc
        return undo

    def _run(
        self,
        conn: _Lease,
        sql: str,
        fmt: str,
        query_params: Mapping[str, str],
        database: str | None,
        settings: Mapping[str, str],
    ) -> Any:
        undo = self._prepare(conn.conn, database, settings, restore=not conn.owned)
        try:
            return conn.conn.query(sql, fmt, params=dict(query_params) or None)
        except Exception as exc:
            raise self._from_chdb(exc) from exc
        finally:
            _undo(conn.conn, undo)

    def _insert(
        self,
        conn: _Lease,
        head: str,
        fmt: str,
        data: bytes,
        database: str | None,
        settings: Mapping[str, str],
    ) -> int:
        undo = self._prepare(conn.conn, database, settings, restore=not conn.owned)
        try:
            inserter = conn.conn.send_insert(head, fmt)
        except Exception as exc:
            _undo(conn.conn, undo)
            raise self._from_chdb(exc) from exc
        try:
            if data:
                inserter.append(data)
            result = inserter.finish()
        except Exception as exc:
            with contextlib.suppress(Exception):  # already finished: nothing to cancel
                inserter.cancel()
            raise self._from_chdb(exc) from exc
        finally:
            _undo(conn.conn, undo)
        return _num(result.rows_written)


class _Lease:
    """A chDB connection for one request: closed after it (fresh ones) or given back to its
    session."""

    def __init__(self, conn: Any, *, owned: bool, release: threading.Lock | None = None) -> None:
        self.conn = conn
        self.owned = owned
        self._release = release

    def __enter__(self) -> _Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.owned:
                self.conn.close()
        finally:
            if self._release is not None:
                self._release.release()


def _connect(path: Path) -> Any:
    import chdb

    return chdb.connect(str(path))  # type: ignore[no-untyped-call]


def _undo(conn: Any, statements: list[str]) -> None:
    for sql in statements:
        try:
            conn.query(sql)
        except Exception:
            logger.warning("Front could not restore session state.", extra={"sql": sql})


def _scalar(conn: Any, sql: str) -> str:
    return str(conn.query(sql, "TSVRaw").bytes().decode().strip())


def _pattern(match: str | None) -> re.Pattern[str] | None:
    return re.compile(match, re.IGNORECASE) if match else None


def _summary(
    read_rows: int,
    read_bytes: int,
    written_rows: int,
    written_bytes: int,
    elapsed_ns: int,
    *,
    result_bytes: int = 0,
) -> str:
    return json.dumps(
        {
            "read_rows": str(read_rows),
            "read_bytes": str(read_bytes),
            "written_rows": str(written_rows),
            "written_bytes": str(written_bytes),
            "total_rows_to_read": str(read_rows),
            "result_rows": "0",
            "result_bytes": str(result_bytes),
            "elapsed_ns": str(elapsed_ns),
        },
        separators=(",", ":"),
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.clickhouse_front --data-dir D [--port P] [--password PW]``:
    serve until interrupted (a stand-in server for manual runs and other processes)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--password", default="", help="password of the user 'default'")
    args = parser.parse_args(argv)
    front = ClickHouseFront(
        args.data_dir, host=args.host, port=args.port, users={"default": args.password}
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"ClickHouse HTTP front on {front.url} (chDB {front.version})", flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        front.stop()


if __name__ == "__main__":
    main()
