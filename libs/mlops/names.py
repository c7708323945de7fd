"""The names the platform gives things, as one set of rules every service checks alike."""

from __future__ import annotations

import re

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""A data set's name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128."""
