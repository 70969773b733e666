"""What a saved model needs and nothing above it: the ensemble, calibration, test-time views, export, prediction."""
