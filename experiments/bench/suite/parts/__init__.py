"""The parts of the accelerator suite (``python -m experiments.device_suite``), one measurement each."""
