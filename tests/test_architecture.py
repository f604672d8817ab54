"""The house's layering (docs/architecture.md), proved from the source with `ast` (not by
grepping), and the public surface pinned.

- no import cycles between Aether's modules, type-only imports (`if TYPE_CHECKING:`) included;
- every module belongs to a layer and imports only from its own unit or from layers below it;
  the infrastructure units (observe, guards, auth, engines, transport) do not import each other;
- libraries stay in their room: wsproto in `transport/`, redis and trio_asyncio in `engines/`;
- `aether_trio/protocol/` is sans-IO: no trio, trio_websocket, redis, prometheus_client or
  trio_asyncio, neither directly nor through another aether_trio module it imports;
- nothing outside `node.py` touches the node's hub, broker or presence engine;
- engines never import the hub, the hub never imports an engine; only `app.py` (the
  composition root) imports the concrete engines (memory, redis);
- one way to decode JSON input: `http/` and `admin/` hand request bodies to their decoders, which
  go through `protocol.decoding` (the only place a body is parsed); they parse no body themselves.

Each check is a function over plain data (a graph, a source text), so the tests below also show
that it fails on a planted cycle, a planted upward import or a planted wsproto import.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = "aether_trio"
# From the checkout, not from `aether_trio.__file__`: see `load_module`.
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
FORBIDDEN_IN_PROTOCOL = ("trio", "trio_websocket", "redis", "prometheus_client", "trio_asyncio")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names of every module an import statement anywhere in `source` may load.

    `from X import y` yields both X and X.y (y may be a submodule). Imports inside functions and
    `if TYPE_CHECKING:` blocks count too: the layering is about what code depends on.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _source_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


SOURCES = _source_files()


def imports_of(module: str) -> set[str]:
    path = SOURCES[module]
    return imported_modules(path.read_text(), module, path.name == "__init__.py")


def _is_within(name: str, root: str) -> bool:
    return name == root or name.startswith(root + ".")


def transitive_internal_imports(module: str) -> set[str]:
    """Every aether_trio module reachable from `module` through imports (itself excluded)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imports_of(todo.pop()):
            if name in SOURCES and name not in seen and name != module:
                seen.add(name)
                todo.append(name)
    return seen


# --- the import parser itself (so the checks below can fail) -----------------------------------


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import trio", "aether_trio.protocol.codec", {"trio"}),
        ("import trio.lowlevel as ll", "aether_trio.protocol.codec", {"trio.lowlevel"}),
        ("from trio import sleep", "aether_trio.protocol.codec", {"trio", "trio.sleep"}),
        (
            "from ..hub import Hub",
            "aether_trio.engines.memory",
            {"aether_trio.hub", "aether_trio.hub.Hub"},
        ),
        ("from .. import hub", "aether_trio.engines.base", {"aether_trio", "aether_trio.hub"}),
        (
            "from .base import Broker",
            "aether_trio.engines.memory",
            {"aether_trio.engines.base", "aether_trio.engines.base.Broker"},
        ),
        (
            "def f():\n    import redis.asyncio\n",
            "aether_trio.protocol.session",
            {"redis.asyncio"},
        ),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from trio import Nursery\n",
            "aether_trio.protocol.session",
            {"typing", "typing.TYPE_CHECKING", "trio", "trio.Nursery"},
        ),
    ],
)
def test_import_parser(source: str, module: str, expected: set[str]) -> None:
    assert imported_modules(source, module) == expected


def test_import_parser_resolves_relative_imports_in_a_package_init() -> None:
    found = imported_modules("from .memory import MemoryBroker", "aether_trio.engines", True)
    assert "aether_trio.engines.memory" in found


def test_the_real_sources_are_seen() -> None:
    assert "orjson" in imports_of("aether_trio.protocol.codec")
    assert "aether_trio.engines.memory" in imports_of("aether_trio.app")
    assert "trio" in imports_of("aether_trio.engines.memory")
    assert "aether_trio.protocol.options" in transitive_internal_imports(
        "aether_trio.protocol.channels"
    )


# --- layering ----------------------------------------------------------------------------------

PROTOCOL_MODULES = sorted(m for m in SOURCES if _is_within(m, f"{PACKAGE}.protocol"))


def test_protocol_package_has_the_expected_modules() -> None:
    expected = {"__init__", "channels", "codec", "codes", "errors", "messages", "options"}
    expected.add("permissions")
    expected.add("session")
    found = {
        m.removeprefix(f"{PACKAGE}.protocol").lstrip(".") or "__init__" for m in PROTOCOL_MODULES
    }
    assert expected <= found


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_protocol_is_sans_io(module: str) -> None:
    closure = {module} | transitive_internal_imports(module)
    offenders = sorted(
        f"{source} imports {name}"
        for source in closure
        for name in imports_of(source)
        if any(_is_within(name, root) for root in FORBIDDEN_IN_PROTOCOL)
    )
    assert offenders == []


@pytest.mark.parametrize("module", PROTOCOL_MODULES)
def test_protocol_depends_on_nothing_above_it(module: str) -> None:
    # The lowest layer: channel options live here, the config imports them (not the reverse).
    internal = transitive_internal_imports(module)
    outside = sorted(name for name in internal if not _is_within(name, f"{PACKAGE}.protocol"))
    assert outside == []


ENGINE_MODULES = sorted(m for m in SOURCES if _is_within(m, f"{PACKAGE}.engines"))


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engines_never_import_the_hub(module: str) -> None:
    hub = f"{PACKAGE}.hub"
    assert sorted(n for n in imports_of(module) if _is_within(n, hub)) == []
    assert hub not in transitive_internal_imports(module)


def test_hub_never_imports_an_engine() -> None:
    engines = f"{PACKAGE}.engines"
    assert sorted(n for n in imports_of(f"{PACKAGE}.hub") if _is_within(n, engines)) == []
    assert (
        sorted(n for n in transitive_internal_imports(f"{PACKAGE}.hub") if _is_within(n, engines))
        == []
    )


def test_only_app_imports_the_memory_engine() -> None:
    memory = f"{PACKAGE}.engines.memory"
    importers = sorted(
        module
        for module in SOURCES
        if module != memory and any(_is_within(n, memory) for n in imports_of(module))
    )
    assert importers == [f"{PACKAGE}.app"]


def test_only_app_imports_the_redis_engine() -> None:
    redis_engine = f"{PACKAGE}.engines.redis"
    importers = sorted(
        module
        for module in SOURCES
        if not _is_within(module, redis_engine)
        and any(_is_within(n, redis_engine) for n in imports_of(module))
    )
    assert importers == [f"{PACKAGE}.app"]


# --- cycles --------------------------------------------------------------------------------------


def import_graph() -> dict[str, set[str]]:
    """Aether's modules and the Aether modules each imports (type-only imports included)."""
    return {m: {n for n in imports_of(m) if n in SOURCES and n != m} for m in SOURCES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # A type-only import is an import: the parser reports it, so the graph has the edge.
    planted = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .node import Node\n"
    assert "aether_trio.node" in imported_modules(planted, "aether_trio.hub")


def test_there_is_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


# --- layers ----------------------------------------------------------------------------------

# Lowest first. A module may import its own unit (the first name under aether_trio: a package or a
# top-level module) and any unit of a lower layer; "" is the package's own __init__.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("protocol", ("protocol", "_version")),
    ("config", ("config",)),
    # Independent of each other (see INDEPENDENT_LAYERS).
    ("infrastructure", ("observe", "guards", "auth", "engines", "transport", "workers", "backend")),
    # The node and what it is made of; cycles among them are caught by the cycle check.
    (
        "core",
        (
            "hub",
            "timers",
            "flusher",
            "hooks",
            "peers",
            "subscriptions",
            "system_channel",
            "broker_channels",
            "channel_states",
            "user_status",
            "cluster",
            "node",
        ),
    ),
    ("connection", ("connection",)),
    ("http", ("http",)),
    ("admin", ("admin",)),
    # `aether backup` and the scheduled backups: reads the admin unit's database and audit chain.
    ("backup", ("backup",)),
    # `aether init` and `aether healthcheck`: clients of a running server (see CLIENT_UNITS).
    ("operations", ("ops",)),
    ("composition", ("app", "cli", "__main__", "")),
)
INDEPENDENT_LAYERS = frozenset({"infrastructure"})


def unit_of(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {unit: n for n, (_, units) in enumerate(LAYERS) for unit in units}
    layer = {unit: name for name, units in LAYERS for unit in units}
    found = []
    for module, imported in sorted(graph.items()):
        unit = unit_of(module)
        if unit not in rank:
            found.append(f"{module} is in no layer (add its unit to LAYERS)")
            continue
        for name in sorted(imported):
            target = unit_of(name)
            if target == unit:
                continue
            if rank[target] > rank[unit]:
                found.append(f"{module} imports {name}: {layer[target]} is above {layer[unit]}")
            elif rank[target] == rank[unit] and layer[unit] in INDEPENDENT_LAYERS:
                found.append(f"{module} imports {name}: {layer[unit]} units are independent")
    return found


def test_the_layer_check_finds_planted_violations() -> None:
    graph = {
        "aether_trio.node": {"aether_trio.connection.client"},  # upward
        "aether_trio.auth.tokens": {"aether_trio.observe.logs"},  # sibling infrastructure
        "aether_trio.connection.client": {"aether_trio.node", "aether_trio.connection.writer"},
        "aether_trio.mystery": set(),
    }
    assert layer_violations(graph) == [
        "aether_trio.auth.tokens imports aether_trio.observe.logs: infrastructure units are "
        "independent",
        "aether_trio.mystery is in no layer (add its unit to LAYERS)",
        "aether_trio.node imports aether_trio.connection.client: connection is above core",
    ]


def test_every_module_imports_only_its_own_unit_or_layers_below() -> None:
    assert layer_violations(import_graph()) == []


# --- the operations unit is a client ----------------------------------------------------------

# `aether init` and `aether healthcheck` reach a server as its clients do (HTTP, WebSocket) and read
# only the configuration; what they may import of Aether (besides their own unit).
CLIENT_UNITS = {"ops": ("protocol", "_version", "config", "auth")}


def client_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imported in sorted(graph.items()):
        allowed = CLIENT_UNITS.get(unit_of(module))
        if allowed is None:
            continue
        for name in sorted(imported):
            target = unit_of(name)
            if name.startswith(PACKAGE) and target != unit_of(module) and target not in allowed:
                found.append(f"{module} imports {name}: a client of the server")
    return found


def test_the_client_check_finds_a_planted_server_import() -> None:
    graph = {"aether_trio.ops.healthcheck": {"aether_trio.node", "aether_trio.config"}}
    assert client_violations(graph) == [
        "aether_trio.ops.healthcheck imports aether_trio.node: a client of the server"
    ]


def test_the_operations_unit_imports_no_server_internals() -> None:
    assert client_violations(import_graph()) == []


# --- libraries in their rooms -------------------------------------------------------------------

# Library -> the units that may import it.
CONFINED = {
    "wsproto": ("transport",),
    "redis": ("engines",),
    "trio_asyncio": ("engines",),
    # The HTTP client of the application's backend proxies.
    "httpx": ("backend",),
}


def confinement_violations(imports: dict[str, set[str]]) -> list[str]:
    return sorted(
        {
            f"{module} imports {library}"
            for module, names in imports.items()
            for name in names
            for library, units in CONFINED.items()
            if _is_within(name, library) and unit_of(module) not in units
        }
    )


def test_the_confinement_check_finds_a_planted_wsproto_import() -> None:
    planted = imported_modules("from wsproto.events import Ping\n", "aether_trio.connection.serve")
    imports = {"aether_trio.connection.serve": planted, "aether_trio.transport.x": {"wsproto"}}
    assert confinement_violations(imports) == ["aether_trio.connection.serve imports wsproto"]


def test_libraries_stay_in_their_rooms() -> None:
    assert confinement_violations({m: imports_of(m) for m in SOURCES}) == []


# --- the node's engines and hub -------------------------------------------------------------------

NODE_INTERNALS = frozenset({"hub", "broker", "presence"})


def node_internals_used(source: str) -> list[str]:
    """`<...>node.hub`, `node.broker`, `self.node.presence` and the like, as `line: expression`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or node.attr not in NODE_INTERNALS:
            continue
        owner = node.value
        if (isinstance(owner, ast.Name) and owner.id == "node") or (
            isinstance(owner, ast.Attribute) and owner.attr == "node"
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_node_internals_check_finds_planted_uses() -> None:
    source = "async def f(ctx, node):\n    ctx.node.hub.add()\n    await node.broker.publish()\n"
    assert node_internals_used(source) == ["2: ctx.node.hub", "3: node.broker"]
    assert node_internals_used("self.hub.add()\nnode.publish()\n") == []


def test_nothing_outside_the_node_touches_its_hub_or_engines() -> None:
    offenders = {
        module: used
        for module, path in SOURCES.items()
        if module != f"{PACKAGE}.node" and (used := node_internals_used(path.read_text()))
    }
    assert offenders == {}


# --- the map of the house ----------------------------------------------------------------------

ARCHITECTURE_DOC = PACKAGE_DIR.parent / "docs" / "architecture.md"


def test_the_architecture_doc_names_every_unit_and_only_files_that_exist() -> None:
    import re

    text = ARCHITECTURE_DOC.read_text()
    for _, units in LAYERS:
        for unit in units:
            if unit and unit != "__main__":
                path = PACKAGE_DIR / unit
                name = f"{unit}/" if path.is_dir() else f"{unit}.py"
                assert f"`{name}`" in text, f"docs/architecture.md does not place {name}"
    # Every `dir/file.py` or `file.py` it names exists (under aether_trio/, or tests/).
    named = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)", text))
    missing = sorted(
        name
        for name in named
        if not (PACKAGE_DIR / name).exists()
        and not (PACKAGE_DIR.parent / name).exists()
        and not list(PACKAGE_DIR.rglob(name))
    )
    assert missing == []


# --- public surface ----------------------------------------------------------------------------


def load_module(module: str) -> ModuleType:
    """The module as its source defines it.

    A stale editable install can make `import aether_trio` resolve to a namespace package (no
    `__file__`, `__init__.py` never run) when the checkout is not on sys.path, as under pytest.
    Then the package's own `__init__.py` is executed into a fresh module object, which is not put
    into sys.modules, so no other test sees it.
    """
    mod = importlib.import_module(module)
    if getattr(mod, "__file__", None) is not None:
        return mod
    path = SOURCES[module]
    spec = importlib.util.spec_from_file_location(
        module, path, submodule_search_locations=[str(path.parent)]
    )
    assert spec is not None
    assert spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    return fresh


def _declared_all(module: str) -> list[str] | None:
    for node in ast.parse(SOURCES[module].read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                assert node.value is not None
                value = ast.literal_eval(node.value)
                return list(value)
    return None


PINNED_PACKAGE_ALL = [
    "AppDisconnect",
    "AppError",
    "Config",
    "ConfigError",
    "Hooks",
    "Server",
    "__version__",
    "load_config",
    "open_server",
]


def test_package_all_is_pinned() -> None:
    declared = _declared_all(PACKAGE)
    assert declared is not None
    assert sorted(declared) == PINNED_PACKAGE_ALL
    assert len(set(declared)) == len(declared)
    package = load_module(PACKAGE)
    assert sorted(package.__all__) == PINNED_PACKAGE_ALL


def test_package_exports_are_the_real_objects() -> None:
    from aether_trio.app import Server, open_server
    from aether_trio.backend import Hooks
    from aether_trio.config import Config, ConfigError, load_config
    from aether_trio.protocol.errors import AppDisconnect, AppError

    package = load_module(PACKAGE)
    assert package.Server is Server
    assert package.open_server is open_server
    assert package.Hooks is Hooks
    assert (package.AppError, package.AppDisconnect) == (AppError, AppDisconnect)
    assert package.Config is Config
    assert package.ConfigError is ConfigError
    assert package.load_config is load_config
    assert isinstance(package.__version__, str)
    assert package.__version__


MODULES_WITH_ALL = sorted(
    module
    for module in SOURCES
    if module.rpartition(".")[2] != "__main__"  # importing it runs the CLI
    and _declared_all(module) is not None
)


def test_modules_with_all_are_found() -> None:
    for module in (PACKAGE, f"{PACKAGE}.protocol.codec", f"{PACKAGE}.hub", f"{PACKAGE}.app"):
        assert module in MODULES_WITH_ALL


@pytest.mark.parametrize("module", MODULES_WITH_ALL)
def test_every_name_in_all_exists(module: str) -> None:
    mod = load_module(module)
    exported = list(mod.__all__)
    assert exported == _declared_all(module)
    assert all(isinstance(name, str) for name in exported)
    assert len(set(exported)) == len(exported), "duplicate names in __all__"
    missing = sorted(name for name in exported if not hasattr(mod, name))
    assert missing == []


def test_importing_the_protocol_layer_loads_no_io_library_at_runtime() -> None:
    """The static check above misses imports made by the package __init__; this one runs them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import aether_trio.protocol.codec, aether_trio.protocol.session\n"
        "import aether_trio.protocol.channels, aether_trio.protocol.permissions\n"
        "print(sorted(m for m in ('trio', 'trio_websocket', 'redis', 'prometheus_client',"
        " 'trio_asyncio') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# --- one way to decode JSON input --------------------------------------------------------------

DECODING = f"{PACKAGE}.protocol.decoding"
# Where http/ and admin/ parse JSON themselves, and why none of it is a request body.
OTHER_JSON = {
    (f"{PACKAGE}.http.api.methods", "_b64_json"): "b64data/b64info, inside an already decoded body",
    (f"{PACKAGE}.http.api.users", "_close_reason"): "checks that a close reason is not JSON",
    (f"{PACKAGE}.admin.chain", "jsonable"): "audit entries: a JSON round trip",
    (f"{PACKAGE}.admin.chain", "_check"): "audit entries read back from the store",
    (f"{PACKAGE}.admin.cli", "call"): "the CLI reading the server's answer",
    (f"{PACKAGE}.admin.cli", "_http_error"): "the CLI reading the server's error answer",
    (f"{PACKAGE}.admin.cli", "_body"): "the CLI's --data argument",
    (f"{PACKAGE}.admin.cli", "cmd_audit"): "the CLI printing audit entries",
    (f"{PACKAGE}.admin.state", "_decode"): "bans and revocations read back from the shared state",
}
# What a route hands `request.body` to; each decodes through DECODING.
BODY_DECODERS = {
    "decode_request": f"{PACKAGE}.http.api.requests",
    "decode_batch": f"{PACKAGE}.http.api.requests",
    "read_body": f"{PACKAGE}.admin.params",
}
JSON_PARSERS = {("orjson", "loads"), ("json", "loads"), ("json", "load")}


def _calls_by_function(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """Every call in `tree` with the name of the function it is in ("" at module level)."""
    found: list[tuple[str, ast.Call]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Call):
                found.append((function, child))
            visit(child, function)

    visit(tree, "")
    return found


def json_parsing_functions(source: str) -> set[str]:
    """Functions of `source` that parse JSON text (`orjson.loads(...)`, `json.loads(...)`, or
    a `loads` imported from either)."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("orjson", "json")
        for alias in node.names
        if alias.name in ("loads", "load")
    }
    functions = set()
    for function, call in _calls_by_function(tree):
        target = call.func
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and (target.value.id, target.attr) in JSON_PARSERS
        ) or (isinstance(target, ast.Name) and target.id in imported):
            functions.add(function)
    return functions


def body_reads(source: str) -> list[str]:
    """How each `<x>.body` of `source` is used, where `x` is a request: the name of the function
    it is passed to directly, or "" when it is used any other way."""
    tree = ast.parse(source)
    as_argument = {
        id(arg): call.func.id if isinstance(call.func, ast.Name) else ""
        for _function, call in _calls_by_function(tree)
        for arg in call.args
    }
    return [
        as_argument.get(id(node), "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "body"
        and isinstance(node.value, ast.Name)
        and node.value.id in ("request", "req")
    ]


@pytest.mark.parametrize(
    ("source", "parsing", "reads"),
    [
        ("def f(request):\n    return orjson.loads(request.body)\n", {"f"}, [""]),
        ("from orjson import loads as l\ndef g(x):\n    return l(x)\n", {"g"}, []),
        (
            "async def h(request):\n    return decode_request('m', request.body)\n",
            set(),
            ["decode_request"],
        ),
        ("def k(request):\n    body = request.body\n    return read_body(body)\n", set(), [""]),
        ("x = json.loads('1')\n", {""}, []),
    ],
)
def test_json_and_body_finders(source: str, parsing: set[str], reads: list[str]) -> None:
    assert json_parsing_functions(source) == parsing
    assert body_reads(source) == reads


HTTP_AND_ADMIN = sorted(
    m for m in SOURCES if _is_within(m, f"{PACKAGE}.http") or _is_within(m, f"{PACKAGE}.admin")
)


@pytest.mark.parametrize("module", HTTP_AND_ADMIN)
def test_http_and_admin_parse_no_request_body_themselves(module: str) -> None:
    # Request bodies are parsed in one place, `protocol.decoding.loads_object`, and decoded by a
    # cattrs converter; anything else parsing JSON here must be listed with its reason.
    parsing = {(module, f) for f in json_parsing_functions(SOURCES[module].read_text())}
    assert sorted(parsing - OTHER_JSON.keys()) == []


@pytest.mark.parametrize("module", HTTP_AND_ADMIN)
def test_request_bodies_go_straight_to_a_decoder(module: str) -> None:
    reads = body_reads(SOURCES[module].read_text())
    assert [r for r in reads if r not in BODY_DECODERS] == []


def test_the_body_decoders_decode_through_the_shared_module() -> None:
    assert body_reads(SOURCES[f"{PACKAGE}.admin.routes"].read_text()) == ["read_body"]
    assert sorted(body_reads(SOURCES[f"{PACKAGE}.http.api.routes"].read_text())) == [
        "decode_batch", "decode_request"
    ]  # fmt: skip
    for name, module in BODY_DECODERS.items():
        tree = ast.parse(SOURCES[module].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body), name
        assert DECODING in imports_of(module)
    # ...where the body is parsed exactly once.
    source = SOURCES[DECODING].read_text()
    assert json_parsing_functions(source) == {"loads_object"}
    assert sum(
        isinstance(c.func, ast.Attribute) and c.func.attr == "loads"
        for _f, c in _calls_by_function(ast.parse(source))
    ) == 1  # fmt: skip
