"""The spec: what a user asks for, as one validated, frozen object.

Pure schema: the fields, their types and their checks, and reading YAML into it with one-line
errors that name the field path. It knows no runner and no model registry; what depends on the
installed runners (parameter names, backends, a runner's own settings section) is checked when
the spec is bound to them (`autotuner.runners.bind`).
"""
