"""YAML that cannot blow up: bounded size and alias expansion, and bounded reprs of values in messages."""

from __future__ import annotations

import reprlib
from typing import Any

import yaml

from tuneforge.errors import TuneforgeError

# A YAML alias is a pointer, so a few hundred bytes of nested aliases ("billion laughs") stand for billions of
# values: cheap to parse, but every walk over the result (validation, error messages, the fingerprint) expands
# them. Run configs are small, so the document is refused when its expanded size passes a bound no real config
# comes near, before anything walks it.
MAX_CONFIG_BYTES = 2**20
MAX_CONFIG_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int]) -> int:
    """How many nodes the document has with every alias expanded, counted without expanding them."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise TuneforgeError("a YAML alias refers to a value that contains it (an endless value)")
    open_nodes.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    total = 1 + sum(_expanded_size(child, memo, open_nodes) for child in children)
    open_nodes.discard(key)
    memo[key] = total
    return total


def compose_bounded(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML into (node tree with line numbers, value), refusing documents that expand past a bound."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            try:
                size = _expanded_size(node, {}, set())
            except TuneforgeError as err:
                raise TuneforgeError(err.what, where=where, fix="write the value out instead") from None
            if size > MAX_CONFIG_NODES:
                raise TuneforgeError(
                    f"the YAML expands to more than {MAX_CONFIG_NODES:,} values (through its aliases)",
                    where=where,
                    fix="write a run config without deeply nested aliases (*name)",
                )
        return node, loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        raise TuneforgeError(f"not valid YAML: {getattr(err, 'problem', err)}", where=at) from None
    except RecursionError:
        raise TuneforgeError("the YAML is nested too deeply", where=where) from None
    finally:
        loader.dispose()


def short_repr(value: Any, limit: int = 200) -> str:
    """A repr for error messages that stays short however big (or alias-expanded) the value is."""
    # reprlib stops at a depth and a count per container, so it never walks the whole value.
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # keyword arguments only from Python 3.12
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 8, 8, 8, 8
    r.maxstring = r.maxother = 120
    return r


_REPR = _bounded_repr()
