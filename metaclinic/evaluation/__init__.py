"""Evaluation: per-episode metrics, the evaluator that turns scored episodes into the meta-test report, the
report itself, temperature calibration, plots, and an adapted model's predictions and export."""
