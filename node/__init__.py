"""Atrium node: a self-hostable, federated home for open AI-image models."""

__version__ = "0.1.0"
