"""The tests: tests/wsjax/ for the library, tests/experiments/ for the harness; helpers.py and the NumPy
references (reference.py, official_reference.py) are shared."""
