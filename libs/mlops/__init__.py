"""Shared library of the MLOps platform: settings, event bus, database, artifact store, gRPC, telemetry.

The generated protobuf packages (``mlops.events.v1``, ``mlops.registry.v1``, …) live beside these
modules; they are produced by ``make protos`` and never edited by hand.
"""
