"""What the installed MLflow UI reads, pinned from its JS bundle: the facts tasks/mlflow_links.py and the order of
the runs' params and metrics rely on. A new MLflow that changes them fails here, not silently in a browser."""

from __future__ import annotations

from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

BUNDLE = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def _bundle_with(snippet: str) -> bool:
    return any(snippet in f.read_text(errors="replace") for f in BUNDLE.glob("*.js"))


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="MLflow installed without its UI")
def test_the_view_follows_the_workflow_type_in_the_link_else_the_browser_genai_first():
    assert _bundle_with('key:"mlflow.workflowType",version:1,initialValue:c')  # localStorage, default below
    assert _bundle_with('const c=l.GENAI')
    assert _bundle_with('const n=e.get("workflowType");return n===l.GENAI||n===l.MACHINE_LEARNING?n:t')  # URL wins
    # the experiment kind comes from the workflow type while this flag is on (it is: R=()=>!0), not from the tag
    assert _bundle_with('n?m(t):(e=>{var t;return null===e||void 0===e||null===(t=e.find(e=>"mlflow.experimentKind"')
    assert _bundle_with('Z0:()=>R') and _bundle_with('I=e=>!0,R=()=>!0')


@pytest.mark.skipif(not BUNDLE.is_dir(), reason="MLflow installed without its UI")
def test_compare_view_plots_first_differing_params_by_name_and_first_shared_metric():
    assert _bundle_with("selectedParamKeys:this.props.diffParamKeys.sort().slice(0,3)")
    assert _bundle_with("selectedMetricKeys:this.props.sharedMetricKeys.slice(0,1)")
