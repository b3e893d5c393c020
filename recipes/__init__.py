"""Recipes shipped with edgeemb (YAML data; this file makes the folder installable as package data)."""
