"""Measurement: held-out FIM line metrics now; replay harness and HumanEval infilling later."""
