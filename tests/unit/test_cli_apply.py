"""YAML → ModelSpec for `mlops apply`: every problem named by the field path the user wrote."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from mlops.cli.apply import SpecError, load_documents, parse_spec, read_specs, server_problems

# The example of DESIGN.md, "Model spec".
DESIGN_SPEC = textwrap.dedent(
    """\
    apiVersion: mlops/v1
    kind: ModelSpec
    metadata:
      name: wine-quality            # the model's name everywhere: registry, inference, traces
    spec:
      dataset: wine                 # trains on every committed version of this data set
      task: classification          # or regression
      label: target
      features: []                  # empty: every column but the label (numeric in v1)
      slices: []                    # columns to report metrics per value of
      training: {hidden_layers: [64, 32], epochs: 30, learning_rate: 0.001, batch_size: 128, seed: 7}
      gate: {metric: accuracy, min: 0.85, max_regression: 0.01, max_p99_latency_ms: 5}
      rollout: {strategy: canary, steps: [10, 50, 100], step_seconds: 20, max_error_rate: 0.01, max_p99_latency_ms: 50}
      monitor: {window_seconds: 30, method: psi, threshold: 0.2, consecutive_windows: 2, on_drift: retrain}
    """
)


def design_document() -> dict:
    return yaml.safe_load(DESIGN_SPEC)


def problems_of(document: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(document, "spec.yaml")
    return caught.value.problems


def test_the_design_example_parses():
    spec = parse_spec(design_document(), "spec.yaml")
    assert spec.api_version == "mlops/v1"
    assert spec.metadata.name == "wine-quality"
    assert list(spec.spec.training.hidden_layers) == [64, 32]
    assert spec.spec.training.HasField("epochs") and spec.spec.training.epochs == 30
    assert spec.spec.gate.min == pytest.approx(0.85)
    assert list(spec.spec.rollout.steps) == [10, 50, 100]
    assert spec.spec.monitor.on_drift == "retrain"
    assert not spec.spec.training.HasField("dropout")  # absent optional scalars stay unset


def test_json_names_yaml_exponents_and_empty_keys_are_accepted():
    document = design_document()
    document["spec"]["training"] = {"hiddenLayers": [8], "learningRate": "1e-3", "dropout": None}
    document["spec"]["serving"] = None
    spec = parse_spec(document, "spec.yaml")
    assert list(spec.spec.training.hidden_layers) == [8]
    assert spec.spec.training.learning_rate == pytest.approx(0.001)
    assert not spec.spec.training.HasField("dropout")


def test_search_spaces_take_any_json_in_choice():
    document = design_document()
    document["spec"]["training"]["search"] = {
        "trials": 4,
        "params": {
            "learning_rate": {"log_uniform": {"low": 1e-4, "high": 1e-2}},
            "hidden_layers": {"choice": [[64, 32], [128, 64]]},
        },
    }
    spec = parse_spec(document, "spec.yaml")
    assert spec.spec.training.search.params["hidden_layers"].WhichOneof("space") == "choice"


def test_unknown_fields_are_named_with_a_suggestion():
    document = design_document()
    document["apiversion"] = document.pop("apiVersion")
    document["spec"]["training"]["epoch"] = 3
    document["spec"]["gate"]["minimum"] = 0.9
    document["spec"]["frobnicate"] = True
    problems = problems_of(document)
    assert "apiversion: unknown field; did you mean 'apiVersion'?" in problems
    assert "spec.training.epoch: unknown field; did you mean 'epochs'?" in problems
    assert any(p.startswith("spec.gate.minimum: unknown field") for p in problems)
    assert any(p.startswith("spec.frobnicate: unknown field (known fields: ") for p in problems)
    assert len(problems) == 4


def test_wrong_types_are_named_by_path_all_at_once():
    document = design_document()
    document["metadata"]["labels"] = {"team": "fraud", "version": 2}
    document["spec"]["training"]["epochs"] = "thirty"
    document["spec"]["training"]["hidden_layers"] = [64, "wide"]
    document["spec"]["training"]["batch_size"] = True
    document["spec"]["gate"]["min"] = "high"
    document["spec"]["rollout"]["auto_promote"] = "yes"
    document["spec"]["rollout"]["steps"] = 10
    document["spec"]["features"] = "alcohol"
    document["spec"]["label"] = 7
    document["spec"]["monitor"] = ["psi"]
    document["spec"]["serving"] = {"max_batch_size": 2**40}
    assert sorted(problems_of(document)) == sorted(
        [
            "metadata.labels.version: expected a string, got 2 (a number); quote it in YAML",
            "spec.training.epochs: expected an integer, got 'thirty'",
            "spec.training.hidden_layers[1]: expected an integer, got 'wide'",
            "spec.training.batch_size: expected an integer, got true (a boolean)",
            "spec.gate.min: expected a number, got 'high'",
            "spec.rollout.auto_promote: expected true or false, got 'yes'",
            "spec.rollout.steps: expected a list, got 10 (a number)",
            "spec.features: expected a list, got 'alcohol'",
            "spec.label: expected a string, got 7 (a number); quote it in YAML",
            "spec.monitor: expected a mapping, got a list",
            f"spec.serving.max_batch_size: {2**40} is out of range [-2147483648, 2147483647]",
        ]
    )


def test_one_of_a_oneof():
    document = design_document()
    document["spec"]["training"]["search"] = {
        "params": {"lr": {"uniform": {"low": 0, "high": 1}, "log_uniform": {"low": 1, "high": 2}}}
    }
    assert problems_of(document) == [
        "spec.training.search.params.lr: set only one of uniform, log_uniform, int_uniform, choice; "
        "got uniform, log_uniform"
    ]


def test_a_document_that_is_not_a_mapping():
    assert problems_of(["a", "list"]) == ["(document): expected a mapping, got a list"]


def test_messages_name_the_document_and_the_model():
    document = design_document()
    document["spec"]["training"]["epochs"] = "x"
    with pytest.raises(SpecError) as caught:
        parse_spec(document, "spec.yaml, document 2")
    assert str(caught.value) == (
        "spec.yaml, document 2 (wine-quality) is invalid:\n  - spec.training.epochs: expected an integer, got 'x'"
    )


def test_yaml_syntax_errors_give_line_and_column():
    with pytest.raises(SpecError) as caught:
        load_documents("apiVersion: mlops/v1\nspec: {dataset: wine\n", "spec.yaml")
    assert caught.value.problems[0].startswith("not valid YAML, line 3, column 1:")
    with pytest.raises(SpecError, match="holds no YAML document"):
        load_documents("# only a comment\n", "spec.yaml")


def test_several_documents_are_named_by_position_and_empty_ones_skipped():
    text = DESIGN_SPEC + "---\n---\n" + DESIGN_SPEC.replace("wine-quality", "wine-regression")
    documents = load_documents(text, "specs.yaml")
    assert [where for where, _ in documents] == ["specs.yaml, document 1", "specs.yaml, document 3"]


def test_read_specs_reports_every_bad_document_before_applying_any(tmp_path):
    good = DESIGN_SPEC
    bad_type = DESIGN_SPEC.replace("epochs: 30", "epochs: many").replace("wine-quality", "bad-one")
    bad_field = DESIGN_SPEC.replace("seed: 7", "sede: 7").replace("wine-quality", "bad-two")
    path = tmp_path / "specs.yaml"
    path.write_text("---\n".join([good, bad_type, bad_field]))
    with pytest.raises(SpecError) as caught:
        read_specs([str(path)])
    assert caught.value.where == "2 documents"
    assert caught.value.problems == [
        f"{path}, document 2 (bad-one): spec.training.epochs: expected an integer, got 'many'",
        f"{path}, document 3 (bad-two): spec.training.sede: unknown field; did you mean 'seed'?",
    ]
    path.write_text(good)
    [document] = read_specs([str(path)])
    assert document.where == f"{path} (wine-quality)"


def test_the_registrys_message_is_split_into_one_problem_per_path():
    message = (
        "the spec is invalid:\n  - spec.task: must be one of classification, regression, got 'x'\n"
        "  - spec.training.epochs: must be at least 1, got 0"
    )
    assert server_problems(message) == [
        "spec.task: must be one of classification, regression, got 'x'",
        "spec.training.epochs: must be at least 1, got 0",
    ]
    assert server_problems("spec.a: bad; spec.b: worse") == ["spec.a: bad", "spec.b: worse"]
    assert server_problems("metadata.name: 'X' is not a name") == ["metadata.name: 'X' is not a name"]
