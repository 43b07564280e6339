"""Ovi: keeps an AWS estate aligned with a YAML file, event-sourced."""
