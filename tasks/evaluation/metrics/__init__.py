"""Metric scripts for `evaluate`, loaded by file path so that scoring works with no hub.

`evaluate.load("rouge")` fetches its script from the Hugging Face Hub; these modules are loaded
with `evaluate.load(<path to the .py>)` instead (see tasks/evaluation/scoring.py).
"""
from pathlib import Path

ROUGE = str(Path(__file__).with_name("loragate_rouge.py"))
BERTSCORE = str(Path(__file__).with_name("loragate_bertscore.py"))
