"""loragate flows: Prefect flows that chain the stages in tasks/ (they hold no stage logic)."""
