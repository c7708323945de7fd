"""`mlops models search`'s expression: what each clause asks the registry for, and what is refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mlops.cli.main import ExitCode, app
from mlops.cli.query import QueryError, parse_search
from mlops.events.v1 import common_pb2
from mlops.registry.v1 import registry_pb2

runner = CliRunner()


def test_every_form_becomes_its_field():
    request = parse_search(
        "metrics.accuracy > 0.9 and metrics.p99_latency_ms <= 5 and tags.team = 'risk' "
        "AND tags.owner = \"ana b\" and alias = 'production' and dataset = 'wine' "
        "and dataset_version = 3 and run = 'run-7'"
    )
    assert [(f.metric, f.comparison, f.value) for f in request.metric_filters] == [
        ("accuracy", common_pb2.COMPARISON_GREATER, 0.9),
        ("p99_latency_ms", common_pb2.COMPARISON_LESS_OR_EQUAL, 5.0),
    ]
    assert dict(request.tags) == {"team": "risk", "owner": "ana b"}
    assert request.alias == "production"
    assert (request.dataset, request.dataset_version) == ("wine", 3)
    assert request.run_id == "run-7"


@pytest.mark.parametrize(
    ("operator", "comparison"),
    [
        (">", common_pb2.COMPARISON_GREATER),
        (">=", common_pb2.COMPARISON_GREATER_OR_EQUAL),
        ("<", common_pb2.COMPARISON_LESS),
        ("<=", common_pb2.COMPARISON_LESS_OR_EQUAL),
    ],
)
def test_each_metric_operator(operator, comparison):
    [condition] = parse_search(f"metrics.rmse{operator}-1.5e-2").metric_filters
    assert (condition.metric, condition.comparison, condition.value) == ("rmse", comparison, -0.015)


def test_a_metric_may_be_bounded_on_both_sides():
    request = parse_search("metrics.accuracy >= 0.8 and metrics.accuracy < 0.95")
    assert [f.value for f in request.metric_filters] == [0.8, 0.95]


def test_and_inside_a_quoted_value_is_the_value():
    assert dict(parse_search("tags.note = 'this and that'").tags) == {"note": "this and that"}


def test_an_empty_expression_matches_every_version():
    assert parse_search("  ") == registry_pb2.SearchModelVersionsRequest()


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("metrics.accuracy = 0.9", "metrics compare with >, >=, < or <="),
        ("metrics.accuracy > high", "compared with a number"),
        ("metrics. > 1", "name the metric"),
        ("tags.team = risk", "a tag's value is quoted"),
        ("tags.team > 'risk'", "takes '='"),
        ("dataset = wine", "dataset's value is quoted"),
        ("dataset_version = '3'", "dataset_version is a whole number"),
        ("dataset_version = 1.5", "dataset_version is a whole number"),
        ("owner = 'me'", "unknown field 'owner'"),
        ("metrics.accuracy > 0.9 or tags.team = 'risk'", "'or' is not supported"),
        ("metrics.accuracy > 0.9 and", "empty clause"),
        ("and metrics.accuracy > 0.9", "empty clause"),
        ("metrics.accuracy > 0.9 and and alias = 'x'", "empty clause"),
        ("metrics.accuracy > 0.9 tags.team = 'risk'", "is not '<field> <operator> <value>'"),
        ("alias = 'x' and tags.team = 'risk", 'clause "tags.team = \'risk": unterminated quote'),
        ("(alias = 'x') and run = 'r'", "clause \"(alias = 'x')\": unexpected '('"),
        ("alias = 'a' and alias = 'b'", "alias is already 'a'"),
    ],
)
def test_a_bad_clause_is_named_with_what_is_allowed(expression, named):
    with pytest.raises(QueryError) as caught:
        parse_search(expression)
    assert named in str(caught.value)


def test_the_bad_clause_is_quoted_as_typed():
    with pytest.raises(QueryError) as caught:
        parse_search("metrics.accuracy > 0.9 and tags.team ~ 'risk'")
    assert "clause \"tags.team ~ 'risk'\": unexpected '~'" in str(caught.value)
    with pytest.raises(QueryError) as caught:
        parse_search("metrics.accuracy > 0.9 and tags.team != 'risk'")
    assert "clause \"tags.team != 'risk'\"" in str(caught.value)
    assert "metrics.<name> >|>=|<|<= <number>" in str(caught.value)


def test_a_bad_expression_is_a_usage_error_before_any_call():
    # An unreachable registry proves that nothing was sent: the expression fails first.
    result = runner.invoke(
        app,
        ["--registry", "127.0.0.1:1", "models", "search", "metrics.accuracy = 0.9"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == ExitCode.USAGE
    assert "metrics compare with >, >=, < or <=" in result.output
