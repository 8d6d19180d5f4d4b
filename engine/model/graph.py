"""The step graph of a flow (networkx): order, cycles and ancestry, all in linear time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import networkx as nx


@dataclass(frozen=True, slots=True)
class Cycle:
    """A dependency cycle, ``steps[0]`` needs ``steps[1]`` ... needs ``steps[0]``."""

    steps: tuple[str, ...]

    def __str__(self) -> str:
        return " -> ".join((*self.steps, self.steps[0]))


class StepGraph:
    """Steps and their `needs`; ``order`` is the file order used to break every tie.

    Needs naming unknown steps are left out; callers report them separately.
    """

    def __init__(self, needs: Mapping[str, Sequence[str]]) -> None:
        self.order = {step: index for index, step in enumerate(needs)}
        self.needs = {
            step: [n for n in wanted if n in self.order] for step, wanted in needs.items()
        }
        self.graph: nx.DiGraph[str] = nx.DiGraph()
        self.graph.add_nodes_from(self.order)
        self.graph.add_edges_from(
            (step, need) for step, wanted in self.needs.items() for need in wanted
        )

    def cycles(self) -> list[Cycle]:
        """One cycle per strongly connected component, each starting at its first step."""
        found = []
        for component in nx.strongly_connected_components(self.graph):
            start = min(component, key=self.order.__getitem__)
            if len(component) == 1 and start not in self.needs[start]:
                continue
            found.append(Cycle(self._cycle_through(start, component)))
        return sorted(found, key=lambda cycle: self.order[cycle.steps[0]])

    def _cycle_through(self, start: str, component: set[str]) -> tuple[str, ...]:
        if start in self.needs[start]:
            return (start,)
        first = next(n for n in self.needs[start] if n in component)
        path = nx.shortest_path(self.graph.subgraph(component), first, start)
        return (start, *path[:-1])

    def execution_order(self) -> list[str]:
        """Steps in an order where each comes after what it needs (file order on ties).

        Only meaningful for an acyclic graph.
        """
        return list(
            nx.lexicographical_topological_sort(
                self.graph.reverse(copy=False), key=lambda step: f"{self.order[step]:09d}"
            )
        )

    def blocked_by(self, steps: Iterable[str]) -> set[str]:
        """Steps that transitively need any of ``steps`` (excluding those given)."""
        given = set(steps)
        reverse = self.graph.reverse(copy=False)
        seen = set(given)
        frontier = list(given)
        while frontier:
            for dependent in reverse.successors(frontier.pop()):
                if dependent not in seen:
                    seen.add(dependent)
                    frontier.append(dependent)
        return seen - given

    def ancestry(self, execution_order: Sequence[str]) -> Ancestry:
        """Ancestor queries for an acyclic graph with the given execution order."""
        return Ancestry(self.needs, {step: i for i, step in enumerate(execution_order)})


class Ancestry:
    """Answers "is ``a`` an ancestor of ``b``" by a backward search pruned by order.

    A search from ``b`` only visits steps that come no earlier than the earliest
    step asked about, so references to nearby steps cost O(1) each, and one
    search per step answers all of its questions.
    """

    def __init__(self, needs: dict[str, list[str]], index: dict[str, int]) -> None:
        self.needs = needs
        self.index = index

    def ancestors_among(self, step: str, candidates: Iterable[str]) -> set[str]:
        """The members of ``candidates`` that ``step`` transitively needs."""
        wanted = {c for c in candidates if c in self.index and self.index[c] < self.index[step]}
        if not wanted:
            return set()
        floor = min(self.index[c] for c in wanted)
        seen: set[str] = set()
        frontier = [step]
        while frontier:
            current = frontier.pop()
            for need in self.needs[current]:
                if need not in seen and self.index[need] >= floor:
                    seen.add(need)
                    frontier.append(need)
        return wanted & seen
