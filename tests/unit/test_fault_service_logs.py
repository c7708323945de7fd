"""The fault suite's report of what the services said: only WARNING and ERROR lines from the test's
own time, tracebacks kept with their line, and a short tail per service for the end of the run."""

import time

from tests.fault import service_logs


def stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def test_keeps_warnings_and_errors_from_the_test_with_their_tracebacks(tmp_path):
    before, during = stamp(1_000_000_000), stamp(1_000_000_100)
    (tmp_path / "trainer.log").write_text(
        f"{before},000 WARNING trainer old news\n"
        f"{during},000 INFO trainer claimed a job\n"
        f"{during},500 ERROR trainer upload failed\n"
        "Traceback (most recent call last):\n"
        "  botocore.exceptions.EndpointConnectionError\n"
        f"{during},900 WARNING opentelemetry.exporter jaeger unreachable\n"
    )
    said = service_logs.said_since(tmp_path, 1_000_000_050)
    assert said == {
        "trainer": [
            f"{during},500 ERROR trainer upload failed",
            "Traceback (most recent call last):",
            "  botocore.exceptions.EndpointConnectionError",
        ]
    }


def test_last_words_keep_the_tail_of_each_service_cut_to_width():
    said = {"deployer": [f"line {n}" for n in range(20)], "monitor": ["x" * 1000]}
    lines = service_logs.last_words(said)
    assert lines[0] == "deployer:"
    assert lines[1:9] == [f"  line {n}" for n in range(12, 20)]
    assert lines[9] == "monitor:"
    assert lines[10] == "  " + "x" * service_logs.LINE_CHARS
