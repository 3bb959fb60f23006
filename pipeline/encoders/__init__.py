"""Frozen encoders for the features stage. Each wrapper loads its weights only in ``setup()``."""
