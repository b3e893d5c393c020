"""Data shipped with edgeemb: model manifests (models/) and recipes (recipes/)."""
