"""Deployment files shipped inside the package (the canonical scheduler configuration)."""
