"""The evaluator: decides whether a newly trained model version is fit to roll out."""
