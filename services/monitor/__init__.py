"""The monitor: windowed drift, live quality and health of the model versions in service."""
