"""The environment variables a user sets in place of a command-line option, in one place, so that the
parser can read them without importing what they configure."""

STORAGE_ENV = "AUTOCLS_STORAGE"  # --storage: the Optuna storage URL
ARTIFACTS_ENV = "AUTOCLS_ARTIFACTS"  # --artifacts: a folder or s3://bucket/prefix for fold models and figures
WEIGHTS_ENV = "AUTOCLS_WEIGHTS"  # --weights: a folder of pretrained weights files
