"""A code step's `call` resolves inside the code roots only, checked before anything is imported."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.calls import CallError, locate, resolve, signature_problem


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    package = tmp_path / "root" / "steps_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        "def run(ctx, text: str, n: int = 1) -> str:\n    return text * n\n"
        "async def later(ctx, **params):\n    return params\n"
        "VALUE = 3\n"
    )
    yield tmp_path / "root"
    for name in [name for name in sys.modules if name.startswith("steps_pkg")]:
        del sys.modules[name]


def test_a_function_under_a_code_root_resolves(root: Path) -> None:
    function = resolve("steps_pkg.good:run", [root])
    assert function(None, text="ab", n=2) == "abab"


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ("os:system", "not found in the code roots"),
        ("builtins:eval", "not found in the code roots"),
        ("steps_pkg.good:__class__", "dunder"),
        ("steps_pkg.__init__:run", "dunder"),
        ("steps_pkg.good:missing", "has no function 'missing'"),
        ("steps_pkg.good:VALUE", "not callable"),
        ("steps_pkg.nothing:run", "not found in the code roots"),
        ("no_such_entry_point", "no entry point"),
    ],
)
def test_unsafe_or_missing_calls_are_refused(root: Path, call: str, reason: str) -> None:
    with pytest.raises(CallError, match=reason):
        resolve(call, [root])


def test_a_look_alike_outside_the_roots_is_never_imported(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "elsewhere" / "evil_lookalike"
    outside.mkdir(parents=True)
    (outside / "__init__.py").write_text("raise SystemExit('imported!')\n")
    sys.path.insert(0, str(outside.parent))
    try:
        with pytest.raises(CallError, match="not found in the code roots"):
            resolve("evil_lookalike:run", [root])
    finally:
        sys.path.remove(str(outside.parent))
    assert "evil_lookalike" not in sys.modules


def test_a_symlink_leading_out_of_the_root_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("raise SystemExit('imported!')\n")
    (root / "steps_pkg" / "linked.py").symlink_to(outside)
    with pytest.raises(CallError, match="not found in the code roots"):
        locate("steps_pkg.linked:run", [root])
    assert "steps_pkg.linked" not in sys.modules


def test_an_import_error_in_user_code_is_reported_not_raised(root: Path) -> None:
    (root / "steps_pkg" / "broken.py").write_text("import nonexistent_module_xyz\n")
    with pytest.raises(CallError, match=r"importing 'steps_pkg\.broken' failed: ModuleNotFound"):
        resolve("steps_pkg.broken:run", [root])


def test_entry_points_resolve_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    info = site / "fr_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fr-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[flowrunner.code_steps]\nshout = fr_plugin:shout\n")
    (site / "fr_plugin.py").write_text("def shout(ctx, text):\n    return text.upper()\n")
    monkeypatch.syspath_prepend(str(site))
    assert resolve("shout", [])(None, text="hi") == "HI"


def test_signatures_must_accept_ctx_and_every_with_key(root: Path) -> None:
    run = resolve("steps_pkg.good:run", [root])
    assert signature_problem(run, ["text"]) is None
    assert signature_problem(run, ["text", "n"]) is None
    assert "unexpected `with` keys: 'size'" in str(signature_problem(run, ["text", "size"]))
    assert "missing a required argument: 'text'" in str(signature_problem(run, []))
    assert signature_problem(resolve("steps_pkg.good:later", [root]), ["any", "keys"]) is None
