"""The 100 days, one package per day (days/001 ... days/100).

Folder names are not identifiers, so a later day imports an earlier one by name:
``importlib.import_module("days.002.linalg")``.
"""
