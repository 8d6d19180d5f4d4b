"""The YAML loader: plain values with positions, and hostile documents refused in bounded cost."""

from __future__ import annotations

import math
import time

import pytest

from engine.model.source import Limits, YamlProblem, decode, load_yaml


def problem(text: str, limits: Limits | None = None) -> YamlProblem:
    with pytest.raises(YamlProblem) as caught:
        load_yaml(text, limits or Limits())
    return caught.value


def test_values_follow_the_yaml_1_2_core_schema() -> None:
    text = "a: 1\nb: 1.5\nc: true\nd: ~\ne: 0x1F\nf: 0o17\ng: 'yes'\nh: on\ni: .inf\nj: '1'\n"
    value, _ = load_yaml(text)
    assert value == {
        "a": 1, "b": 1.5, "c": True, "d": None, "e": 31, "f": 15,
        "g": "yes", "h": "on", "i": math.inf, "j": "1",
    }  # fmt: skip


def test_every_key_and_value_has_its_line_and_column() -> None:
    text = "steps:\n  - id: a\n    needs: [b, c]\n    prompt: |\n      hi\n"
    _, source = load_yaml(text)
    assert source.key_at("/steps/0/needs")[:2] == (3, 5)
    assert source.value_at("/steps/0/needs/1")[:2] == (3, 16)
    assert source.value_at("/steps/0/prompt") == (4, 13, "|")
    assert source.value_at("/steps/0/needs/9")[:2] == (3, 12)  # nearest located ancestor


def test_columns_count_characters_not_bytes() -> None:
    _, source = load_yaml("é: ü\nb: [x, 'ÿ']\n")
    assert source.value_at("/é")[:2] == (1, 4)
    assert source.value_at("/b/1")[:2] == (2, 8)


def test_pointer_tokens_are_escaped() -> None:
    _, source = load_yaml("a/b: {c~d: 1}\n")
    assert source.value_at("/a~1b/c~0d")[:2] == (1, 12)


def test_duplicate_keys_are_fr014_at_the_second_key() -> None:
    found = problem("a: 1\nb:\n  c: 1\n  c: 2\n")
    assert (found.rule, found.line, found.column) == ("FR014", 4, 3)
    assert "first defined at line 3" in found.message


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("a: !!python/name:os.system x\n", 1, 4, "explicit tag '!!python/name:os.system'"),
        ("a: !custom x\n", 1, 4, "explicit tag '!custom'"),
        ("a: !!str x\n", 1, 4, "explicit tag '!!str'"),
        ("base: &b {x: 1}\nc:\n  <<: *b\n", 3, 3, "merge keys"),
        ("a: [1, 2\n", 2, 1, "expected ',' or ']'"),
        ("? [a]\n: 1\n", 1, 3, "keys must be plain strings"),
        ("a: *nowhere\n", 1, 4, "unknown alias"),
        ("a: 1\n---\nb: 2\n", 2, 1, "one YAML document"),
    ],
)
def test_refused_constructs_are_positioned(text: str, line: int, column: int, words: str) -> None:
    found = problem(text)
    assert (found.rule, found.line, found.column) == ("FR001", line, column)
    assert words in found.message


def test_nesting_beyond_the_depth_limit_is_refused() -> None:
    found = problem("a: " + "[" * 100 + "]" * 100, Limits(max_depth=20))
    assert "deeper than 20" in found.message
    load_yaml("a: " + "[" * 19 + "]" * 19, Limits(max_depth=20))


def test_a_billion_laughs_document_never_expands() -> None:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    started = time.perf_counter()
    found = problem("\n".join(lines), Limits(max_aliases=1000, max_nodes=100_000))
    assert "expands to more than 100000 nodes" in found.message
    assert time.perf_counter() - started < 5


def test_aliases_beyond_the_limit_are_refused() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 11) + "]\n"
    assert "more than 10 aliases" in problem(text, Limits(max_aliases=10)).message
    value, _ = load_yaml(text, Limits(max_aliases=11))
    assert value["b"] == [1] * 11


def test_oversized_documents_are_refused_before_parsing() -> None:
    with pytest.raises(YamlProblem, match="250 bytes, larger than the limit of 100 bytes"):
        decode(b"a: 1\n" * 50, Limits(max_bytes=100))


def test_invalid_utf8_is_positioned_at_the_bad_byte() -> None:
    with pytest.raises(YamlProblem) as caught:
        decode("a: 1\nbé: \xff".encode("latin-1"))
    assert (caught.value.line, caught.value.column) == (2, 2)
    assert "invalid UTF-8" in caught.value.message


def test_a_byte_order_mark_is_ignored() -> None:
    assert load_yaml(decode(b"\xef\xbb\xbfa: 1\n"))[0] == {"a": 1}
