"""A notebook, as a script: train a scikit-learn classifier on the wine data set scikit-learn ships, track
the run with mlops_client (params, a metric per epoch, tags, files) and register the model.

    # once, so that the registry knows the data set the model is judged on:
    python libs/mlops-client/examples/notebook.py --write-csv wine.csv
    mlops data commit wine.csv --dataset wine
    # then, as often as you like:
    python libs/mlops-client/examples/notebook.py --dataset wine --model wine-sgd
    mlops runs show RUN_ID

Without --dataset the run is logged and no model registered. The registry's address and credentials
come from MLOPS_REGISTRY_ADDR / MLOPS_TOKEN / MLOPS_CA_FILE or the `mlops` CLI's current context.
Each `# %%` starts a cell, for editors that run a script cell by cell.
"""

# %% Set-up
from __future__ import annotations

import argparse
import json

import mlops_client
import numpy as np
from sklearn.datasets import load_wine
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--experiment", default="wine-notebook", help="The experiment the run belongs to.")
parser.add_argument("--dataset", help="The registry's data set to judge the model on, NAME or NAME@VERSION.")
parser.add_argument("--model", default="wine-sgd", help="The model name to register the version under.")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument(
    "--write-csv", metavar="PATH", help="Only write the data set as CSV (for `mlops data commit`)."
)
args = parser.parse_args()

wine = load_wine(as_frame=True)
if args.write_csv:
    wine.frame.to_csv(args.write_csv, index=False)
    print(f"wrote {args.write_csv}: {len(wine.frame)} rows, label column 'target'")
    raise SystemExit(0)

# %% Data: features in the data set's column order, as the platform feeds them
features = wine.frame.drop(columns=["target"]).to_numpy(dtype=np.float32)
target = wine.frame["target"].to_numpy()
X_train, X_test, y_train, y_test = train_test_split(
    features, target, test_size=0.25, random_state=7, stratify=target
)
params = {"alpha": 1e-3, "loss": "log_loss", "epochs": args.epochs, "seed": 7}

# %% Train, one epoch at a time, logging as we go
client = mlops_client.Client()
with client.start_run(
    experiment=args.experiment, params=params, tags={"notebook": "wine"}, dataset=args.dataset
) as run:
    scaler = StandardScaler().fit(X_train)
    classifier = SGDClassifier(loss="log_loss", alpha=params["alpha"], random_state=params["seed"])
    classes = np.unique(target)
    for epoch in range(1, args.epochs + 1):
        classifier.partial_fit(scaler.transform(X_train), y_train, classes=classes)
        probabilities = classifier.predict_proba(scaler.transform(X_test))
        run.log_metrics(
            {
                "train_accuracy": accuracy_score(y_train, classifier.predict(scaler.transform(X_train))),
                "val_loss": log_loss(y_test, probabilities, labels=classes),
                "val_accuracy": accuracy_score(y_test, probabilities.argmax(axis=1)),
            },
            step=epoch,
        )
    run.set_tag("framework", "scikit-learn")

    # %% Files: anything the run produced
    matrix = confusion_matrix(y_test, classifier.predict(scaler.transform(X_test))).tolist()
    run.log_artifact(json.dumps({"confusion_matrix": matrix}, indent=2).encode(), path="eval/confusion.json")

    # %% The model: converted to ONNX with skl2onnx and registered (the evaluator gates it next)
    model = make_pipeline(scaler, classifier)
    if args.dataset:
        version = run.log_model(
            model, name=args.model, dataset=args.dataset, label="target", sample=X_test[:5]
        )
        print(f"registered {version.name} v{version.version} (created: {version.created})")
    else:
        print("no --dataset: model not registered")

# %% Read it back
finished = client.get_run(run.run_id)
print(f"run {finished.run_id} {finished.status}: val_accuracy {finished.metrics['val_accuracy']:.3f}")
print(f"see it with: mlops runs show {finished.run_id}")
client.close()
