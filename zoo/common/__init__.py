"""Shared parts: data, networks, the Trainer, metrics and small helpers."""
