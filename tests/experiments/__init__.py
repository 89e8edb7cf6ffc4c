"""Tests of the harness (experiments/): trainer, input pipeline, study, benchmarks, accelerator suite."""
