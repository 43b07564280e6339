"""The YAML side of config loading: the node tree, lines, and error messages.

msgspec validates the decoded data and reports a path (``$.resources[1].count``)
but no line; PyYAML's composed node tree knows the lines. This module keeps both
and turns every complaint into a :class:`~ovi._exceptions.ConfigError` naming
file, field path, line, what was expected and what was found.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from datetime import date
from typing import Any

import msgspec
import yaml

from ovi._exceptions import ConfigError

__all__ = ["Path", "SourceDocument", "load_document", "render_path"]

Path = tuple[str | int, ...]

_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?) - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`$", re.S)
_PATH_TOKEN = re.compile(r"\.(?P<field>[^.\[]+)|\[(?P<index>\d+)\]|(?P<dictval>\[\.\.\.\])")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_:/@+=-]+")
_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "float": "a number",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
    "time": 'a UTC time "HH:MM"',
    "duration": "a duration like 5m",
}


def render_path(path: Path) -> str:
    """``("resources", 1, "tags", "team")`` → ``resources[1].tags.team``."""
    out: list[str] = []
    for token in path:
        if isinstance(token, int):
            out.append(f"[{token}]")
        elif _PLAIN_KEY.fullmatch(token):
            out.append(f".{token}" if out else token)
        else:
            out.append(f"[{json.dumps(token, ensure_ascii=False)}]")
    return "".join(out)


def load_document(text: str, source: str) -> SourceDocument:
    """Parse ``text`` as one YAML document that must be a mapping.

    :raises ConfigError: on a YAML syntax error, an empty document, a
        non-mapping top level, or a key given twice.
    """
    _check_depth(text, source)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            # Before constructing: merge keys (<<) are flattened into the node tree then.
            _check_duplicate_keys(node, source)
            _check_expansion(node, source)
        data = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = exc.problem or exc.context or "unreadable input"
        got = f"a syntax error ({problem})"
        raise ConfigError(source, "", "valid YAML", line=line, got=got) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", "valid YAML", got=str(exc)) from exc
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(source, "", "a mapping at the top level", line=1, got="an empty file")
    doc = SourceDocument(source, node, data)
    if not isinstance(data, dict):
        raise doc.error((), "a mapping at the top level")
    return doc


#: deepest nesting of mappings and lists a config may have: the real ones use 4
#: (rules.maintenance_window.days); PyYAML's composer recurses per level.
MAX_DEPTH = 32
#: most nodes a document may expand to through aliases (``*a`` repeated, nested)
MAX_NODES = 100_000


def _check_depth(text: str, source: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` before composing: the
    composer would end in a RecursionError. Reading the events needs no
    recursion, and their marks say where the nesting went too deep."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark else None
                    raise ConfigError(source, "", f"mappings and lists nested at most"
                                      f" {MAX_DEPTH} deep", line=line,
                                      got=f"more than {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return  # reported, with its line, by the real load


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a document that aliases expand beyond :data:`MAX_NODES` values
    (``a: &a [x, x]``, ``b: &b [*a, *a]``, … doubles at every line): the
    composed tree shares the nodes, but validating it would walk every copy."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a node met again inside itself counts once
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[id(node)] = total = min(total, MAX_NODES + 1)
        return total

    if size(root) > MAX_NODES:
        raise ConfigError(source, "", f"at most {MAX_NODES:,} values once aliases (*name)"
                          " are expanded", line=1, got="more")


class SourceDocument:
    """A decoded YAML document with its node tree, for locating and rendering errors."""

    def __init__(self, source: str, root: yaml.Node, data: Any) -> None:
        self.source = source
        self.root = root
        self.data = data

    # -- locating ---------------------------------------------------------------

    def node_at(self, path: Path, *, key: bool = False) -> yaml.Node:
        """The deepest node along ``path`` (the key node of the last step if ``key``)."""
        node = self.root
        for i, token in enumerate(path):
            found = _child(node, token)
            if found is None:
                break
            key_node, node = found
            if key and i == len(path) - 1:
                return key_node
        return node

    def value_at(self, path: Path) -> Any:
        """The decoded value at ``path``, or ``None`` if the path does not exist."""
        value = self.data
        for token in path:
            if isinstance(token, int):
                if not isinstance(value, list) or token >= len(value):
                    return None
            elif not isinstance(value, dict) or token not in value:
                return None
            value = value[token]
        return value

    def error(
        self, path: Path, expected: str, *, got: str | None = None, key: bool = False,
        show_got: bool = True,
    ) -> ConfigError:
        """A ConfigError for ``path``; ``got`` defaults to the value found there."""
        node = self.node_at(path, key=key)
        if got is None and show_got:
            got = self.render_value(path)
        return ConfigError(
            self.source, render_path(path), expected, line=node.start_mark.line + 1, got=got
        )

    def render_value(self, path: Path, *, wants_text: bool = False) -> str:
        """How the value at ``path`` was written; with ``wants_text``, explain YAML's
        reading of an unquoted scalar that did not stay text (``no`` → false)."""
        node = self.node_at(path)
        value = self.value_at(path)
        if isinstance(node, yaml.MappingNode):
            return "a mapping" if node.value else "an empty mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list" if node.value else "an empty list"
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
        raw = node.value if isinstance(node, yaml.ScalarNode) else repr(value)
        if value is None and raw in ("", "~", "null", "Null", "NULL"):
            return "nothing" if raw == "" else raw
        if wants_text and isinstance(node, yaml.ScalarNode) and node.style is None:
            return (
                f"{raw} (YAML reads it as {_describe(value)}; quote it, "
                f"{json.dumps(raw, ensure_ascii=False)}, to mean the text)"
            )
        return raw

    # -- checks msgspec cannot do -----------------------------------------------

    def check_integers(self) -> None:
        """Reject integers YAML 1.1 reads in another base (``010`` → 8, ``0x1f``,
        ``1:30`` → 90, ``1_000``): they rarely mean what they show."""
        for path, node in _walk(self.root, ()):
            if (
                isinstance(node, yaml.ScalarNode) and node.style is None
                and node.tag == "tag:yaml.org,2002:int" and not _DECIMAL.fullmatch(node.value)
            ):
                raise ConfigError(
                    self.source, render_path(path),
                    f"a plain decimal number, or \"{node.value}\" in quotes to mean the text",
                    line=node.start_mark.line + 1,
                    got=f"{node.value}, which YAML reads as {self.value_at(path)!r}",
                )

    # -- msgspec ------------------------------------------------------------------

    def translate(
        self, exc: msgspec.ValidationError, schema: type, patterns: Mapping[str, str]
    ) -> ConfigError:
        """Turn a msgspec validation error into a ConfigError with path and line.

        ``patterns`` maps the regexes used in ``schema`` to the words shown
        for them (``a region like us-east-1``).
        """
        text = str(exc)
        match = _MSGSPEC_AT.match(text)
        message, is_key = text, False
        path: Path = ()
        if match is not None:
            message, is_key = match["msg"], match["key"] is not None
            path = _parse_path(match["path"])
        if is_key or (path and path[-1] is _DICT_VALUE):
            return self._dict_entry_error(path, is_key)
        type_info = _type_at(msgspec.inspect.type_info(schema), path)
        if m := re.fullmatch(r"Object contains unknown field `(.*)`", message):
            return self._unknown_field(path, m[1], type_info)
        if m := re.fullmatch(r"Object missing required field `(.*)`", message):
            return self.error((*path, m[1]), "a value (the field is required)", show_got=False)
        choices = _choices(type_info)
        if choices is not None:
            return self.error(path, choices)
        if m := re.fullmatch(r"Expected `([^`]*)`, got `([^`]*)`", message):
            wanted = [w for w in m[1].split(" | ") if w != "null"] or ["null"]
            expected = _describe_type(type_info, patterns) or " or ".join(
                _TYPE_WORDS.get(w, f"`{w}`") for w in wanted
            )
            got = self.render_value(path, wants_text="str" in wanted)
            return self.error(path, expected, got=got)
        return self.error(path, _constraint_words(message, patterns))

    def _dict_entry_error(self, path: Path, is_key: bool) -> ConfigError:
        # msgspec says `[...]` instead of the key: find the offending entry ourselves.
        base = path[:-1] if path and path[-1] is _DICT_VALUE else path
        if is_key:
            node = self.node_at(base)
            for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
                if key_node.tag != "tag:yaml.org,2002:str":
                    raw = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                    return ConfigError(
                        self.source, render_path((*base, raw)),
                        "a text key (quote it)", line=key_node.start_mark.line + 1,
                        got=f"{raw}, which YAML does not read as text",
                    )
        mapping = self.value_at(base)
        if isinstance(mapping, dict):
            for k, v in mapping.items():
                if isinstance(k, str) and not isinstance(v, str):
                    entry = (*base, k)
                    return self.error(
                        entry, "a string", got=self.render_value(entry, wants_text=True)
                    )
        return self.error(base, "a mapping of strings to strings")

    def _unknown_field(self, path: Path, name: str, type_info: Any) -> ConfigError:
        known = [f.encode_name for f in getattr(type_info, "fields", ())]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        return self.error(
            (*path, name), "one of the fields " + ", ".join(known), key=True,
            got=f"an unknown field{hint}",
        )


class _DictValue:
    """Stands for msgspec's ``[...]`` (a mapping value whose key it does not name)."""


_DICT_VALUE: Any = _DictValue()


def _parse_path(text: str) -> Path:
    tokens: list[str | int] = []
    for m in _PATH_TOKEN.finditer(text):
        if m["field"] is not None:
            tokens.append(m["field"])
        elif m["index"] is not None:
            tokens.append(int(m["index"]))
        else:
            tokens.append(_DICT_VALUE)
    return tuple(tokens)


def _check_duplicate_keys(root: yaml.Node, source: str) -> None:
    """Reject a key given twice in one mapping (PyYAML keeps the last silently)."""
    for path, node in _walk(root, ()):
        if not isinstance(node, yaml.MappingNode):
            continue
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(
                    source, render_path((*path, key_node.value)),
                    f"each key once (first given on line {seen[key_node.value]})",
                    line=line, got="it again",
                )
            seen[key_node.value] = line


def _child(node: yaml.Node, token: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(token, int):
        return (node, node.value[token]) if token < len(node.value) else None
    if isinstance(node, yaml.MappingNode):
        # Last match wins: constructing put merged (<<) keys before the mapping's own.
        for key_node, value_node in reversed(node.value):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(token):
                return key_node, value_node
    return None


def _walk(
    node: yaml.Node, path: Path, seen: set[int] | None = None
) -> Iterator[tuple[Path, yaml.Node]]:
    seen = set() if seen is None else seen
    if id(node) in seen:  # aliases share nodes; visit each once
        return
    seen.add(id(node))
    yield path, node
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            yield from _walk(value_node, (*path, name), seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _walk(item, (*path, i), seen)


def _type_at(info: Any, path: Path) -> Any:
    for token in path:
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.StructType) and isinstance(token, str):
            info = next((f.type for f in info.fields if f.encode_name == token), None)
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.VarTupleType):
            info = info.item_type
        else:
            return None
    return _unwrap(info)


def _unwrap(info: Any) -> Any:
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return rest[0] if len(rest) == 1 else info
    return info


def _choices(info: Any) -> str | None:
    if isinstance(info, msgspec.inspect.LiteralType):
        values = [str(v) for v in info.values]
    elif isinstance(info, msgspec.inspect.EnumType):
        values = [str(m.value) for m in info.cls]
    else:
        return None
    quoted = [json.dumps(v) for v in values]
    return quoted[0] if len(quoted) == 1 else "one of " + ", ".join(quoted)


def _describe_type(info: Any, patterns: Mapping[str, str]) -> str | None:
    """Words for a constrained scalar type, so a wrong type is met with the full
    expectation (``an integer ≥ 0``), not just ``an integer``."""
    if isinstance(info, msgspec.inspect.IntType) and info.ge is not None:
        return f"an integer ≥ {info.ge}"
    if isinstance(info, msgspec.inspect.StrType) and info.pattern is not None:
        return patterns.get(info.pattern)
    return None


def _constraint_words(message: str, patterns: Mapping[str, str]) -> str:
    if m := re.fullmatch(r"Expected `str` matching regex '(.*)'", message):
        # msgspec shows the pattern as a repr, backslashes doubled
        words = {p.replace("\\", "\\\\"): w for p, w in patterns.items()} | dict(patterns)
        return words.get(m[1], f"a string matching {m[1]}")
    if m := re.fullmatch(r"Expected `(str|array|object)` of length >= 1", message):
        kinds = {"str": "a non-empty string", "array": "a non-empty list"}
        return kinds.get(m[1], "a non-empty mapping")
    if m := re.fullmatch(r"Expected `(\w+)` (>=|<=|>|<) (\S+)", message):
        sign = {">=": "≥", "<=": "≤"}.get(m[2], m[2])
        return f"{_TYPE_WORDS.get(m[1], m[1])} {sign} {m[3]}"
    return message[:1].lower() + message[1:]


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "the boolean " + str(value).lower()
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return "null" if value is None else type(value).__name__


