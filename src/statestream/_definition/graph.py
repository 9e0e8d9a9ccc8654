"""The status graph of a workflow, and its Mermaid diagram."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ..errors import InvalidInput

__all__ = ["Graph", "describe_status"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def describe_status(name: str) -> str:
    """``PAYMENT_RECEIVED`` or ``PaymentReceived`` -> ``Payment Received``."""
    if "_" in name or name.isupper():
        return " ".join(part.capitalize() for part in name.split("_") if part)
    return _CAMEL.sub(" ", name)


class Graph:
    """Directed graph over status values; insertion order is kept everywhere."""

    def __init__(self) -> None:
        self._edges: dict[int, list[int]] = {}
        self._incoming: set[int] = set()

    def copy(self) -> Graph:
        other = Graph()
        other._edges = {k: list(v) for k, v in self._edges.items()}
        other._incoming = set(self._incoming)
        return other

    def add_node(self, node: int) -> None:
        self._edges.setdefault(node, [])

    def add_edge(self, src: int, dst: int) -> None:
        self.add_node(src)
        self.add_node(dst)
        if dst not in self._edges[src]:
            self._edges[src].append(dst)
        self._incoming.add(dst)

    def __contains__(self, node: object) -> bool:
        return node in self._edges

    @property
    def nodes(self) -> list[int]:
        return list(self._edges)

    def transitions(self, node: int) -> list[int]:
        return list(self._edges.get(node, ()))

    def is_terminal(self, node: int) -> bool:
        return node in self._edges and not self._edges[node]

    @property
    def starting_nodes(self) -> list[int]:
        return [n for n in self._edges if n not in self._incoming]

    @property
    def terminal_nodes(self) -> list[int]:
        return [n for n in self._edges if not self._edges[n]]

    def mermaid(
        self,
        title: str,
        describe: Callable[[int], str],
        direction: str = "LR",
        steps: Iterable[int] = (),
    ) -> str:
        """A Mermaid ``stateDiagram-v2`` of the graph, fenced for Markdown."""
        if direction not in {"LR", "RL", "TB", "BT"}:
            raise InvalidInput(f"direction must be LR, RL, TB or BT, got {direction!r}")
        lines = ["```mermaid", "---", f"title: Workflow diagram of {title}", "---"]
        lines += ["stateDiagram-v2", f"\tdirection {direction}"]
        for node in self._edges:
            lines.append(f"\t{_node_id(node)}: {describe(node)}")
        for node in self.starting_nodes:
            lines.append(f"\t[*] --> {_node_id(node)}")
        for src, dsts in self._edges.items():
            if len(dsts) > 1:
                choice = f"{_node_id(src)}_branching"
                lines.append(f"\tstate {choice} <<choice>>")
                lines.append(f"\t{_node_id(src)} --> {choice}")
                lines += [f"\t{choice} --> {_node_id(d)}" for d in dsts]
            elif dsts:
                lines.append(f"\t{_node_id(src)} --> {_node_id(dsts[0])}")
        for node in self.terminal_nodes:
            lines.append(f"\t{_node_id(node)} --> [*]")
        lines.append("```")
        return "\n".join(lines) + "\n"


def _node_id(node: int) -> str:
    return f"s{node}" if node >= 0 else f"s_{-node}"
