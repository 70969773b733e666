"""The final model from a study: refit (candidates, selection, views, calibration, manifest) and distillation."""
