"""Two Prefect automations that hand a dead worker's flow run to another worker (docs/SCALE.md).

A host that dies (power, SIGKILL, OOM of the whole machine) leaves its flow run RUNNING forever: nothing in the
Prefect server notices. The work-pool deployments (prefect.yaml, tag ``dapl-pool``) send a heartbeat every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds; the first automation marks a run CRASHED after three missed
heartbeats, the second puts a run that crashed on its first attempt back in the pool's queue (``AwaitingRetry``,
as the UI's Retry button does). The next worker re-runs it: finished tasks are cache hits and the interrupted
training resumes from its checkpoint on the shared filesystem.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from tasks.common import PROJECT_ROOT

POOL_TAG = "dapl-pool"
MISSED_HEARTBEATS = 3
CRASH_SILENT, RETRY_CRASHED = "dapl: crash silent flow runs", "dapl: retry a crashed flow run once"


def heartbeat_seconds(prefect_yaml: Path = PROJECT_ROOT / "prefect.yaml") -> int:
    """The heartbeat period the work-pool deployments run with (their job environment in prefect.yaml)."""
    doc = yaml.safe_load(prefect_yaml.read_text())
    env = doc["definitions"]["work_pool"]["job_variables"]["env"]
    return int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])


def automations(heartbeat: int | None = None) -> list:
    """The two automations, scoped to flow runs tagged :data:`POOL_TAG` (other flows on a shared server, with
    Prefect's default 180 s heartbeat, are never touched)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    period = heartbeat or heartbeat_seconds()
    ours = [ResourceSpecification({"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{POOL_TAG}"})]
    silent = Automation(
        name=CRASH_SILENT,
        description=f"No event from a {POOL_TAG} flow run for {MISSED_HEARTBEATS} heartbeats ({period} s each): "
                    "its worker is gone; mark the run Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}), match_related=ours,
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=MISSED_HEARTBEATS * period)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {MISSED_HEARTBEATS * period} s: its worker is gone")],
    )
    retry = Automation(
        name=RETRY_CRASHED,
        description=f"A {POOL_TAG} flow run that crashed on its first attempt goes back to its work pool; the next "
                    "worker resumes it from its checkpoints.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*", "prefect.run-count": "1"}),
            match_related=ours, for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
            within=timedelta(0)),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name="AwaitingRetry",
                                    message="crashed on its first attempt: rescheduled for another worker")],
    )
    return [silent, retry]


def ensure(heartbeat: int | None = None) -> list[str]:
    """Create the automations, or update those of the same name (so running it twice is harmless); returns one
    line per automation. Needs ``PREFECT_API_URL`` (the shared server)."""
    lines = []
    for a in automations(heartbeat):
        try:
            old = type(a).read(name=a.name)
        except ValueError:  # Prefect's "Automation with name ... not found"
            a.create()
            lines.append(f"created automation {a.name!r}")
            continue
        a.id = old.id
        a.update()
        lines.append(f"updated automation {a.name!r}")
    return lines
