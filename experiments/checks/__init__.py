"""One-off checks of wsjax against other code, each with its record in ``results/``.

python -m experiments.checks.official_check {torch,compare} ...   # from_official vs the official PyTorch code
"""
