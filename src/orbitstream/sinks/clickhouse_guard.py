"""Read-only for real: what a user's query may do on the embedded store and ClickHouse.

``readonly = 1`` alone is not enough: measured on chDB 26.9, it refuses ``file()``,
``url()``, ``executable()`` and ``remote()`` as table functions and any settings change,
but lets ``SELECT file('/etc/hostname')`` read a file, ``INTO OUTFILE`` write one, and a
``;`` run a second statement. So a user query (``POST /api/query``,
``orbitstream query``) is checked by ClickHouse's own parser first:

1. ``formatQuery(<the text>)`` — exactly one statement (a second one is a syntax error);
   what runs afterwards is this normalized text, never the original;
2. ``EXPLAIN AST`` of it (parsing only, nothing executes), walked here: the statement is a
   ``SELECT`` (with ``WITH``/``UNION``/subqueries), ``SHOW``, ``DESCRIBE``, ``EXISTS`` or
   ``EXPLAIN`` of one; no ``INTO OUTFILE``, ``FORMAT`` or ``SETTINGS``; every table is in
   an allowed database (the project's namespaces and ``system``); table functions only
   from :data:`SAFE_TABLE_FUNCTIONS` (generators of numbers and literal values); no
   function that reaches outside the process (:data:`DENIED_FUNCTIONS`: files, URLs,
   other servers, dictionaries, models, sleeping);
3. the query runs with ``readonly = 1`` and a time limit (the store's settings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from orbitstream.sinks.clickhouse_sql import quote_str
from orbitstream.sinks.results import QueryError

__all__ = [
    "DENIED_FUNCTIONS",
    "SAFE_TABLE_FUNCTIONS",
    "SYSTEM_DATABASES",
    "AstNode",
    "check_ast",
    "guard_query",
    "parse_explain_ast",
    "tsv_unescape",
]

#: Table functions that only generate values in memory.
SAFE_TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateseries",
        "primes",
        "values",
        "null",
        "view",
    }
)
#: Functions refused wherever they appear (lower-case): every table function that reads
#: or writes outside the store, plus scalar functions that touch files, the network,
#: dictionaries (whose sources may be files or URLs) or just sleep.
DENIED_FUNCTIONS = frozenset(
    {
        "file",
        "filecluster",
        "filesystem",
        "url",
        "urlcluster",
        "s3",
        "s3cluster",
        "gcs",
        "cosn",
        "oss",
        "hdfs",
        "hdfscluster",
        "azureblobstorage",
        "azureblobstoragecluster",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "mysql",
        "postgresql",
        "sqlite",
        "odbc",
        "jdbc",
        "mongodb",
        "redis",
        "ytsaurus",
        "bigquery",
        "arrowflight",
        "arrowstream",
        "executable",
        "python",
        "input",
        "format",
        "merge",
        "loop",
        "dictionary",
        "iceberg",
        "icebergs3",
        "icebergazure",
        "iceberghdfs",
        "iceberglocal",
        "deltalake",
        "deltalakes3",
        "deltalakeazure",
        "deltalakelocal",
        "hudi",
        "paimon",
        "paimons3",
        "paimonazure",
        "paimonhdfs",
        "paimonlocal",
        "prometheusquery",
        "prometheusqueryrange",
        "viewifpermitted",
        "viewexplain",
        "fuzzjson",
        "fuzzquery",
        "generaterandom",
        "mergetreeindex",
        "mergetreeprojection",
        "catboostevaluate",
        "naivebayesclassifier",
        "evalmlmethod",
        "sleep",
        "sleepeachrow",
        "dictget",
        "dicthas",
        "dictgethierarchy",
        "dictisin",
        "dictgetchildren",
        "dictgetdescendants",
        "dictgetall",
        "dictgetkeys",
    }
)
SYSTEM_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA"})
_STATEMENTS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "ShowTables",
        "DescribeQuery",
        "ExistsTableQuery",
        "ShowCreateTableQuery",
        "Explain",
    }
)
_IN_FUNCTIONS = frozenset(
    {"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin"}
)
_LINE = re.compile(r"^( *)(\S+)(?: (.*?))?(?: \(alias (.*?)\))?(?: \(children (\d+)\))?$")


@dataclass(slots=True)
class AstNode:
    """One node of ``EXPLAIN AST`` output: ``Function file (alias f) (children 1)``."""

    kind: str
    name: str = ""
    children: list[AstNode] = field(default_factory=list)

    def walk(self) -> Iterator[tuple[AstNode, AstNode | None]]:
        """Every node with its parent, depth first."""
        stack: list[tuple[AstNode, AstNode | None]] = [(self, None)]
        while stack:
            node, parent = stack.pop()
            yield node, parent
            stack.extend((child, node) for child in reversed(node.children))


def parse_explain_ast(text: str) -> AstNode:
    """The tree of ``EXPLAIN AST`` text (one node per line, one space of indent a level)."""
    root: AstNode | None = None
    stack: list[tuple[int, AstNode]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise QueryError(f"cannot read the query's syntax tree at {line.strip()[:80]!r}")
        depth = len(m.group(1))
        node = AstNode(m.group(2), (m.group(3) or "").strip())
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            stack[-1][1].children.append(node)
        elif root is None:
            root = node
        else:
            raise QueryError("send one statement")
        stack.append((depth, node))
    if root is None:
        raise QueryError("empty query")
    return root


def _database_of(name: str) -> str | None:
    """``db`` of ``db.table`` (``None`` for an unqualified name)."""
    if "." not in name:
        return None
    if name.count(".") > 1:
        raise QueryError(
            f"the name {name!r} is ambiguous: quote no dots inside database or table names"
        )
    return name.split(".", 1)[0]


def check_ast(root: AstNode, databases: Iterable[str]) -> None:
    """Refuse anything but a read of the allowed databases (see the module docstring).

    :raises QueryError: naming what is not allowed.
    """
    allowed = {*databases, *SYSTEM_DATABASES}
    if root.kind not in _STATEMENTS:
        raise QueryError(
            f"queries here are read-only: SELECT, SHOW, DESCRIBE, EXISTS or EXPLAIN (got {root.kind})",
            164,
        )
    if root.kind == "SelectWithUnionQuery" and len(root.children) > 1:
        raise QueryError("INTO OUTFILE, FORMAT and SETTINGS are not allowed here", 164)
    for node, parent in root.walk():
        kind = node.kind
        if kind == "Explain":
            if not node.children or node.children[0].kind not in _STATEMENTS:
                raise QueryError("EXPLAIN only of a read query", 164)
        elif kind == "Set":
            raise QueryError("SETTINGS are not allowed here", 164)
        elif kind == "TableIdentifier":
            db = _database_of(node.name)
            if db is not None and db not in allowed:
                raise QueryError(f"database {db!r} is not readable here", 497)
        elif kind == "Function":
            fn = node.name.lower()
            if fn in DENIED_FUNCTIONS:
                raise QueryError(f"function {node.name}() is not allowed here", 164)
            if (
                parent is not None
                and parent.kind == "TableExpression"
                and fn not in SAFE_TABLE_FUNCTIONS
            ):
                raise QueryError(f"table function {node.name}() is not allowed here", 164)
            if fn in _IN_FUNCTIONS:
                _check_in_operand(node, allowed)
        elif (
            kind == "Identifier"
            and parent is not None
            and parent.kind == "ShowTables"
            and node.name not in allowed
        ):
            raise QueryError(f"database {node.name!r} is not readable here", 497)
    if root.kind in ("ShowCreateTableQuery", "ExistsTableQuery") and len(root.children) > 1:
        db = root.children[0].name
        if db not in allowed:
            raise QueryError(f"database {db!r} is not readable here", 497)


def _check_in_operand(node: AstNode, allowed: set[str]) -> None:
    """``x IN db.table``: the right side names a table."""
    args = node.children[0].children if node.children else []
    if len(args) == 2 and args[1].kind == "Identifier":
        db = _database_of(args[1].name)
        if db is not None and db not in allowed:
            raise QueryError(f"database {db!r} is not readable here", 497)


_TSV_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f"}
_TSV_ESCAPE = re.compile(r"\\(.)", re.S)


def tsv_unescape(value: str) -> str:
    """A ``TabSeparated`` field as text (``\\n`` -> newline, ``\\\\`` -> backslash)."""
    return _TSV_ESCAPE.sub(lambda m: _TSV_ESCAPES.get(m.group(1), m.group(1)), value)


def guard_query(sql: str, databases: Iterable[str], run: Callable[[str], str]) -> str:
    """The normalized single statement to run for ``sql``, after the checks above.

    :param run: runs a (trusted) query on the store, with no ``FORMAT`` clause added (on
        ``EXPLAIN`` it would be parsed as part of the statement checked), and returns
        its ``TabSeparated`` text.
    :raises QueryError: not one statement, or not allowed.
    """
    text = sql.strip()
    if not text:
        raise QueryError("empty query")
    out = run(f"SELECT formatQuerySingleLine({quote_str(text)})")
    normalized = tsv_unescape(out.rstrip("\n")).strip()
    if not normalized:
        raise QueryError("empty query")
    tree = "\n".join(tsv_unescape(line) for line in run(f"EXPLAIN AST {normalized}").splitlines())
    check_ast(parse_explain_ast(tree), databases)
    return normalized
