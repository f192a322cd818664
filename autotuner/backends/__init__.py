"""Runners, installed as autotuner.backends. Each module imports its heavy library lazily."""
