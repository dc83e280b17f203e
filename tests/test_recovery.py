"""The crash-recovery automations (flows/recovery.py) agree with prefect.yaml: the window is three of the heartbeats
the work-pool deployments send, and both automations touch only flow runs of those deployments. The behaviour
(a killed worker's run finished by the other) is tests/test_scale.py's."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml

pytest.importorskip("prefect")

from flows import recovery  # noqa: E402
from tasks.common import PROJECT_ROOT  # noqa: E402


def test_every_pool_deployment_heartbeats_and_carries_the_tag_the_automations_match():
    from dapl.paths import ENV_DEFAULTS

    doc = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    assert recovery.heartbeat_seconds() >= 30  # Prefect's minimum
    # a worker started by hand has no scripts/env.sh: the job environment carries the client's retry codes too
    job_env = doc["definitions"]["work_pool"]["job_variables"]["env"]
    assert job_env["PREFECT_CLIENT_RETRY_EXTRA_CODES"] == ENV_DEFAULTS["PREFECT_CLIENT_RETRY_EXTRA_CODES"]
    for d in doc["deployments"]:
        assert recovery.POOL_TAG in d["tags"], d["name"]
        assert d["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]


def test_the_pool_deploys_what_one_machine_serves():
    """prefect.yaml (work pool) and `python -m flows serve` (one machine) offer the same deployments."""
    from flows.__main__ import DEPLOYMENTS

    doc = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    pool = {d["name"]: (d["description"], d["parameters"]) for d in doc["deployments"]}
    assert pool == {name: (desc, {"kind": name}) for name, desc in DEPLOYMENTS.items()}


def test_silence_crashes_and_a_first_crash_is_retried_only_for_pool_runs():
    silent, retry = recovery.automations(heartbeat=40)
    assert silent.trigger.within == timedelta(seconds=120)  # 3 missed heartbeats of 40 s
    assert silent.trigger.posture == "Proactive" and silent.trigger.after == {"prefect.flow-run.heartbeat"}
    assert [a.state.value for a in silent.actions] == ["CRASHED"]
    assert retry.trigger.expect == {"prefect.flow-run.Crashed"} and retry.trigger.posture == "Reactive"
    assert retry.trigger.match.root["prefect.run-count"] == "1"  # one retry: a run that crashes again stays Crashed
    assert [(a.state.value, a.name) for a in retry.actions] == [("SCHEDULED", "AwaitingRetry")]
    for a in (silent, retry):
        assert [r.root for r in a.trigger.match_related] == [
            {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{recovery.POOL_TAG}"}]
