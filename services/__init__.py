"""The platform's services, one package each: registry, trainer, evaluator, deployer, inference, monitor.

Every service has the same shape (composition root `__main__.py`, settings, core, servicer,
handlers, storage, migrations) and imports only `mlops` (libs/) and the generated protos.
"""
