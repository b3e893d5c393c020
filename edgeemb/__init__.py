"""edgeemb: compress the token embedding table of small models for edge devices."""
__version__ = "0.1.0"
