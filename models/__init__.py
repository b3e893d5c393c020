"""Manifests of real models installed from PyPI (YAML data; this file makes the folder installable as package data)."""
