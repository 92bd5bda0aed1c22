"""The project's tooling: the ledger, gating, the README's generated sections, staging and rendering.

`tasks.py` is a thin invoke layer over this package; each module has its own tests in
pipeline/tests/. The publish pipeline's order is in pipeline/publish.py.
"""
