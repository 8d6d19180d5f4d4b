"""A flow's DAG laid out in layers (Sugiyama, by grandalf), to be drawn as inline SVG.

The layout depends on the flow's steps and needs only, so it is computed once per
flow snapshot (:data:`LAYOUTS`, keyed by the snapshot's hash) in a thread, off the
event loop, and every page of every run of that snapshot reuses it; the steps'
statuses are drawn over it per page.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from grandalf.graphs import Edge, Vertex, graph_core
from grandalf.layouts import SugiyamaLayout

WIDTH = 168
HEIGHT = 48
GAP = 36
"""Space between layers and between neighbours (px)."""
MARGIN = 12
ROUNDS = 4
"""Crossing-reduction sweeps for a small graph; big ones get fewer (see :func:`layout`)."""


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str
    x: float
    """Left edge."""
    y: float
    """Top edge."""


@dataclass(frozen=True, slots=True)
class Layout:
    nodes: tuple[Node, ...]
    edges: tuple[str, ...]
    """Each edge as an SVG path (``M x y L x y ...``), from the need to the step."""
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Spec:
    """A step as the layout needs it."""

    id: str
    kind: str
    needs: tuple[str, ...]


class _Box:
    """The view grandalf reads a vertex's size from (and writes its centre to)."""

    def __init__(self) -> None:
        self.w, self.h = WIDTH, HEIGHT
        self.xy = (0.0, 0.0)


class _Route:
    """The view grandalf writes an edge's route to."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = points


def layout(steps: Sequence[Spec]) -> Layout:
    """Lay out ``steps`` top to bottom, each connected part beside the previous one."""
    vertices = {step.id: Vertex(step.id) for step in steps}
    for vertex in vertices.values():
        vertex.view = _Box()
    edges = []
    for step in steps:
        for need in step.needs:
            if need in vertices:
                edge = Edge(vertices[need], vertices[step.id])
                edge.view = _Route()
                edges.append(edge)
    rounds = ROUNDS if len(steps) <= 200 else 1
    offset = 0.0
    for part in _parts(steps, vertices, edges):
        sugiyama = SugiyamaLayout(part)
        sugiyama.xspace, sugiyama.yspace = GAP, GAP
        sugiyama.init_all(inverted_edges=[])  # a flow is acyclic (lint checked it)
        sugiyama.draw(rounds)
        left = min(v.view.xy[0] for v in part.sV) - WIDTH / 2
        shift = offset - left
        for vertex in part.sV:
            x, y = vertex.view.xy
            vertex.view.xy = (x + shift, y)
        for edge in part.sE:
            edge.view.points = [(x + shift, y) for x, y in edge.view.points]
        offset = max(v.view.xy[0] for v in part.sV) + WIDTH / 2 + GAP
    return _placed(steps, vertices, edges)


def _parts(
    steps: Sequence[Spec], vertices: dict[str, Vertex], edges: list[Edge]
) -> list[graph_core]:
    """The connected parts of the graph, each as grandalf's ``graph_core``, in step order.
    (grandalf's ``Graph`` finds them too, in time quadratic in the steps: 0.35 s of 1,000.)"""
    parent = {step.id: step.id for step in steps}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for edge in edges:
        parent[root(edge.v[1].data)] = root(edge.v[0].data)
    members: dict[str, tuple[list[Vertex], list[Edge]]] = {}
    for step in steps:
        members.setdefault(root(step.id), ([], []))[0].append(vertices[step.id])
    for edge in edges:
        members[root(edge.v[0].data)][1].append(edge)
    return [graph_core(found, links) for found, links in members.values()]


def _placed(steps: Sequence[Spec], vertices: dict[str, Vertex], edges: list[Edge]) -> Layout:
    if not steps:
        return Layout((), (), 0, 0)
    top = min(v.view.xy[1] for v in vertices.values()) - HEIGHT / 2
    dx, dy = MARGIN, MARGIN - top
    nodes = tuple(
        Node(
            step.id,
            step.kind,
            vertices[step.id].view.xy[0] - WIDTH / 2 + dx,
            vertices[step.id].view.xy[1] - HEIGHT / 2 + dy,
        )
        for step in steps
    )
    paths = []
    for edge in edges:
        points = list(edge.view.points or [edge.v[0].view.xy, edge.v[1].view.xy])
        (x0, y0), (x1, y1) = points[0], points[-1]
        points[0], points[-1] = (x0, y0 + HEIGHT / 2), (x1, y1 - HEIGHT / 2)  # edge to edge
        paths.append("M " + " L ".join(f"{x + dx:.0f} {y + dy:.0f}" for x, y in points))
    width = max(node.x for node in nodes) + WIDTH + MARGIN
    height = max(node.y for node in nodes) + HEIGHT + MARGIN
    return Layout(nodes, tuple(paths), width, height)


class Layouts:
    """A bounded LRU of layouts by key (a snapshot's hash); computed in a thread."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self._found: OrderedDict[str, Layout] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, key: str) -> Layout | None:
        with self._lock:
            found = self._found.get(key)
            if found is not None:
                self._found.move_to_end(key)
            return found

    async def get(self, key: str, steps: Sequence[Spec]) -> Layout:
        found = self.cached(key)
        if found is None:
            found = await asyncio.to_thread(layout, steps)
            with self._lock:
                self._found[key] = found
                while len(self._found) > self.size:
                    self._found.popitem(last=False)
        return found


LAYOUTS = Layouts()
