"""Reproduction specs shipped with factrecall (``factrecall reproduce paper-quick``); see tasks/reproduction.py."""
