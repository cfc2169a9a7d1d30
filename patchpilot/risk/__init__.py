"""Patch risk: advisory data, features, the model, scoring and evaluation."""
