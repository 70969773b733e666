"""What a study keeps: the Optuna storage, the artifact store, fold models and trial records."""
