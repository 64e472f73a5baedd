"""End-to-end tests of the server path (a package, so that its conftest does not shadow tests/conftest.py)."""
