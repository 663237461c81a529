"""The action plugins trapd ships, written against the same API as a site's own.

One sub-package per plugin family, each with its code, its documentation
(README.md), a sample rule (example.yaml) and its tests together. They are
registered in pyproject.toml under ``[project.entry-points."trapd.actions"]``.
"""
