"""Evaluation: generation on the hold-out (holdout), ROUGE/BERTScore with paired bootstrap
intervals (scoring, through the offline `evaluate` modules in metrics/), and the MLflow record
with plots and the HTML page (report)."""
