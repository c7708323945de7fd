"""The search expression of `mlops models search`, parsed strictly into a SearchModelVersionsRequest.

    metrics.accuracy > 0.9 and tags.team = 'risk' and dataset = 'wine' and dataset_version = 3

Clauses are joined by `and` (there is no `or`, no parentheses, no negation):

    metrics.<name> >|>=|<|<= <number>
    tags.<key> = '<value>'
    alias = '<alias>'        dataset = '<name>'        dataset_version = <integer>        run = '<run id>'

Values are quoted with ' or " (either, the same at both ends; no escapes). A clause that fits none of
these is refused with its text and the forms allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlops.events.v1 import common_pb2
from mlops.registry.v1 import registry_pb2

ALLOWED = (
    "metrics.<name> >|>=|<|<= <number>, tags.<key> = '<value>', alias = '<alias>', "
    "dataset = '<name>', dataset_version = <integer>, run = '<run id>', joined by 'and'"
)

COMPARISONS = {
    ">": common_pb2.COMPARISON_GREATER,
    ">=": common_pb2.COMPARISON_GREATER_OR_EQUAL,
    "<": common_pb2.COMPARISON_LESS,
    "<=": common_pb2.COMPARISON_LESS_OR_EQUAL,
}

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<string>'[^']*'|"[^"]*")
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<operator>>=|<=|!=|==|[<>=!])
    | (?P<word>[A-Za-z_][\w.:/-]*)
    """,
    re.VERBOSE,
)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_KEY = re.compile(r"^[\w.:/-]+$")
_STRING_FIELDS = {"alias": "alias", "dataset": "dataset", "run": "run_id"}


class QueryError(ValueError):
    """An expression that cannot be parsed; the message names the clause and what is allowed."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    start: int


def _tokens(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            clause = _clause_around(expression, tokens, position)
            if expression[position] in "'\"":
                raise QueryError(
                    f"clause {clause!r}: unterminated quote; close it with {expression[position]}"
                )
            raise QueryError(f"clause {clause!r}: unexpected {expression[position]!r}; allowed: {ALLOWED}")
        if match.lastgroup != "space":
            tokens.append(_Token(match.lastgroup, match.group(), match.start()))
        position = match.end()
    return tokens


def _clause_around(expression: str, tokens: list[_Token], position: int) -> str:
    """The clause that reading stopped in: from the last `and` read to the next `and` or the end."""
    joins = [t for t in tokens if t.kind == "word" and t.text.lower() == "and"]
    start = joins[-1].start + len(joins[-1].text) if joins else 0
    following = _AND.search(expression, position)
    return expression[start : following.start() if following else len(expression)].strip()


def _clauses(expression: str) -> list[tuple[str, list[_Token]]]:
    """The clauses between `and`s, each with its text as typed."""
    clauses: list[list[_Token]] = [[]]
    for token in _tokens(expression):
        if token.kind == "word" and token.text.lower() == "and":
            clauses.append([])
        elif token.kind == "word" and token.text.lower() in ("or", "not"):
            raise QueryError(f"{token.text!r} is not supported; allowed: {ALLOWED}")
        else:
            clauses[-1].append(token)
    parsed = []
    for index, tokens in enumerate(clauses, start=1):
        if not tokens:
            where = "at the start" if index == 1 else "at the end" if index == len(clauses) else "in a row"
            raise QueryError(f"an empty clause ('and' {where}); allowed: {ALLOWED}")
        end = tokens[-1].start + len(tokens[-1].text)
        parsed.append((expression[tokens[0].start : end], tokens))
    return parsed


def _unquoted(token: _Token) -> str:
    return token.text[1:-1]


def parse_search(expression: str) -> registry_pb2.SearchModelVersionsRequest:
    """The request an expression asks for; an empty expression asks for every version."""
    request = registry_pb2.SearchModelVersionsRequest()
    if not expression.strip():
        return request
    seen: dict[str, str] = {}
    for text, tokens in _clauses(expression):
        if len(tokens) != 3 or tokens[0].kind != "word" or tokens[1].kind != "operator":
            raise QueryError(f"clause {text!r} is not '<field> <operator> <value>'; allowed: {ALLOWED}")
        field, operator, value = tokens
        name = field.text
        if name.startswith("metrics."):
            metric = name.removeprefix("metrics.")
            if not metric or not _KEY.match(metric):
                raise QueryError(f"clause {text!r}: name the metric, e.g. metrics.accuracy")
            if operator.text not in COMPARISONS:
                raise QueryError(
                    f"clause {text!r}: metrics compare with >, >=, < or <=, not {operator.text!r}"
                )
            if value.kind != "number":
                raise QueryError(f"clause {text!r}: a metric is compared with a number, e.g. 0.9")
            request.metric_filters.add(
                metric=metric, comparison=COMPARISONS[operator.text], value=float(value.text)
            )
            continue
        if operator.text != "=":
            raise QueryError(f"clause {text!r}: {name} takes '=', not {operator.text!r}; allowed: {ALLOWED}")
        if name.startswith("tags."):
            key = name.removeprefix("tags.")
            if not key:
                raise QueryError(f"clause {text!r}: name the tag, e.g. tags.team = 'risk'")
            if value.kind != "string":
                raise QueryError(f"clause {text!r}: a tag's value is quoted, e.g. tags.{key} = 'x'")
            _once(seen, name, _unquoted(value), text)
            request.tags[key] = _unquoted(value)
        elif name in _STRING_FIELDS:
            if value.kind != "string":
                raise QueryError(f"clause {text!r}: {name}'s value is quoted, e.g. {name} = 'x'")
            _once(seen, name, _unquoted(value), text)
            setattr(request, _STRING_FIELDS[name], _unquoted(value))
        elif name == "dataset_version":
            if value.kind != "number" or not value.text.isdigit() or int(value.text) < 1:
                raise QueryError(f"clause {text!r}: dataset_version is a whole number from 1, unquoted")
            _once(seen, name, value.text, text)
            request.dataset_version = int(value.text)
        else:
            raise QueryError(f"clause {text!r}: unknown field {name!r}; allowed: {ALLOWED}")
    return request


def _once(seen: dict[str, str], name: str, value: str, text: str) -> None:
    """A field other than a metric may be given once: two values would match nothing."""
    if name in seen and seen[name] != value:
        raise QueryError(f"clause {text!r}: {name} is already {seen[name]!r}; a version has one {name}")
    seen[name] = value
