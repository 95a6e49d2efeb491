"""Helpers shared by test modules (fixtures stay in each folder's conftest.py)."""
