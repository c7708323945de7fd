"""The `mlops` command line: typer commands over the platform's gRPC APIs, tables or `--json`."""
