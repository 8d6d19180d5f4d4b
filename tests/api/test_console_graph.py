"""The console's graph layout: layers top to bottom, parts side by side, big chains in a thread."""

from __future__ import annotations

import asyncio

from engine.console.graph import HEIGHT, WIDTH, Layouts, Spec, layout


def test_steps_sit_below_what_they_need_and_parts_side_by_side() -> None:
    steps = [
        Spec("a", "agent", ()),
        Spec("b", "code", ("a",)),
        Spec("c", "code", ("a",)),
        Spec("d", "approval", ("b", "c")),
        Spec("alone", "agent", ()),
    ]
    placed = {node.id: node for node in layout(steps).nodes}
    assert placed["a"].y < placed["b"].y == placed["c"].y < placed["d"].y
    assert abs(placed["b"].x - placed["c"].x) >= WIDTH  # no overlap in a layer
    others = [placed[name] for name in "abcd"]
    assert all(placed["alone"].x >= node.x + WIDTH for node in others)
    assert [node.kind for node in layout(steps).nodes] == [s.kind for s in steps]


def test_edges_run_from_a_needs_bottom_to_a_steps_top() -> None:
    drawn = layout([Spec("a", "agent", ()), Spec("b", "code", ("a",))])
    a, b = drawn.nodes
    assert drawn.edges == (
        f"M {a.x + WIDTH / 2:.0f} {a.y + HEIGHT:.0f} L {b.x + WIDTH / 2:.0f} {b.y:.0f}",
    )


def test_a_chain_of_a_thousand_steps_is_laid_out_in_a_thread_and_cached() -> None:
    steps = [Spec(f"s{n}", "code", (f"s{n - 1}",) if n else ()) for n in range(1000)]
    cache = Layouts(size=1)

    async def twice() -> tuple[object, object, object]:
        first = await cache.get("k", steps)  # grandalf's cycle search recursed too deep here
        return first, await cache.get("k", []), cache.cached("other")

    first, again, missing = asyncio.run(twice())
    assert again is first and missing is None
    assert len(first.nodes) == 1000 and len(first.edges) == 999  # type: ignore[attr-defined]
