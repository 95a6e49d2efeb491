"""Errors shared across the server's layers (a leaf: imports nothing of the server), so that a
module can raise them without importing the module that reads configuration or plans memory."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration the server cannot serve; the message says which setting and why."""


class PlanError(ValueError):
    """The model cannot be served on the given GPUs (or the request is malformed)."""
