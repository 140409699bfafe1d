"""The human decision inside a running flow: Prefect pauses it with a form (decision, reviewer,
rationale) and the answer goes through the same gate as `loragate approve` / `reject`.

    loragate run --wait-for-approval   # with PREFECT_API_URL pointing at a Prefect server
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.input import RunInput

from tasks.config import Config
from tasks.governance.gate import Decision, GateError, approve, record_timeout, reject


class ApprovalInput(RunInput):
    """The Prefect UI form a paused run shows its reviewer."""
    decision: Literal["approve", "reject"]
    reviewer: str
    rationale: str


def await_decision(cfg: Config, root: str | Path, model: str, version: str, description: str) -> tuple[Decision | None, str]:
    """Pause the running flow with the approval form; the answer goes through the gate's approve or
    reject. A timeout or a refused answer leaves the version pending, and says so."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    form = ApprovalInput.with_initial_data(description=description, decision="reject")
    try:
        # poll every 2 s, not Prefect's 10: the reviewer sees the resume take effect at once
        answer = pause_flow_run(wait_for_input=form, timeout=cfg.gate.approval_timeout_s, poll_interval=2)
    except FlowPauseTimeout:
        record_timeout(cfg, root, model, version, cfg.gate.approval_timeout_s)
        return None, f"no decision within {cfg.gate.approval_timeout_s} s: version {version} stays pending"
    decide = approve if answer.decision == "approve" else reject
    try:
        return decide(cfg, root, model, version, answer.reviewer, answer.rationale), ""
    except GateError as err:
        return None, f"decision refused: {err}; version {version} stays pending"
