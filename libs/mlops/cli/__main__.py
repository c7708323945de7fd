from mlops.cli.main import app

app(prog_name="mlops")
