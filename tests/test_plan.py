"""The planning layer (dapl.plan): one resolution of configs and one sweep for the CLI, the flow and DVC."""

from __future__ import annotations

import pytest
import yaml

from dapl import cli
from dapl.config import DaplConfig, PromptSetting
from dapl.paths import PROJECT_ROOT, TOY_CHECKPOINT
from dapl.plan import (
    DEFAULT_M1M2,
    DEFAULT_TAUS,
    PSEUDO_VARIANTS,
    RUN_SECTIONS,
    Run,
    RunSpec,
    Sweep,
    default_runs_dir,
    distinct_runs,
    feature_groups,
    plan_runs,
    recipe,
    resolve_config,
    run_config,
    sweep_specs,
)

TOY_DOMAINS = ["art", "clipart", "product", "real"]


def test_benchmark_covers_the_datasets_pairs_and_encodes_each_domain_once():
    cfg = DaplConfig()
    runs = plan_runs(Sweep(seeds=(1, 2)), cfg, TOY_DOMAINS, "/r")
    assert len({r.spec.pair for r in runs}) == 12
    assert len(runs) == 12 * (1 + 2 + 2)  # zero-shot is deterministic: one seed
    groups = feature_groups(runs)
    assert sorted(d for g in groups for d in g) == sorted(TOY_DOMAINS)
    odd = feature_groups(plan_runs(Sweep(), cfg, TOY_DOMAINS[:3], "/r"))
    assert {d for g in odd for d in g} == set(TOY_DOMAINS[:3]) and len(odd) == 2
    visda = DaplConfig.from_preset("paper", {"data": {"dataset": "visda2017", "source": ["synthetic"],
                                                      "target": ["real"]}})
    assert {s.pair for s in sweep_specs(Sweep(), visda, ["synthetic", "real"])} == {"synthetic->real"}


def test_ablation_defaults_are_issue_10s_grids():
    specs = sweep_specs(Sweep(kind="ablations"), DaplConfig(), TOY_DOMAINS)
    assert [s.setting for s in specs if s.axis == "setting"] == [x.value for x in PromptSetting]
    assert [(s.m1, s.m2) for s in specs if s.axis == "m1m2"] == [(a, b) for a in (4, 8, 16) for b in (4, 8, 16)]
    assert [s.tau for s in specs if s.axis == "tau"] == [0.4, 0.5, 0.6, 0.7]
    assert {s.pair for s in specs} == {"real->art"}
    assert tuple((a, b) for a in (4, 8, 16) for b in (4, 8, 16)) == DEFAULT_M1M2 and DEFAULT_TAUS[0] == 0.4
    with pytest.raises(ValueError, match="not in toy"):
        sweep_specs(Sweep.parse("ablations", pairs="real->nowhere"), DaplConfig(), TOY_DOMAINS)


def test_identical_configs_are_one_run_under_every_label():
    """The ablations' unified+domain setting, its 16x16 cell and its τ 0.5 cell are one configuration: one run
    (one output folder) that each label shows; every other label keeps its own run."""
    base = resolve_config(workdir=PROJECT_ROOT)
    runs = plan_runs(Sweep(kind="ablations"), base, TOY_DOMAINS, "/r")
    assert [r.spec.label for r in runs][:5] == [f"setting:{s.value}" for s in PromptSetting]  # every label
    by_label = {r.spec.label: r for r in runs}
    shared = by_label["setting:unified_domain"]
    twins = [r.spec.label for r in runs if r.config == shared.config]
    assert twins == ["setting:unified_domain", "m1m2:16x16", "tau:0.5", "pseudo:paper"]
    assert str(shared.config.output_dir) == "/r/real_art/setting_unified_domain/seed1"
    own = run_config(base, by_label["tau:0.5"].spec, "/r")  # what the τ cell resolved to before the dedupe
    assert own.output_dir != shared.config.output_dir and own.digest(*RUN_SECTIONS) == shared.digest
    distinct = distinct_runs(runs)
    assert len(distinct) == len(runs) - 3 and any(r is shared for r in distinct)
    assert len({r.config.output_dir for r in distinct}) == len(distinct)
    bench = plan_runs(Sweep(seeds=(1, 2)), base, TOY_DOMAINS, "/r")
    assert distinct_runs(bench) == bench  # no two benchmark labels share a configuration


def test_sweep_parses_cli_strings_and_flow_lists_alike():
    a = Sweep.parse("ablations", seeds="1,2", pairs="art->real", m1m2="4x8,16x4", taus="0.4,0.7",
                    settings="unified,manual")
    b = Sweep.parse("ablations", seeds=[1, 2], pairs=["art->real"], m1m2=["4x8", [16, 4]], taus=[0.4, 0.7],
                    settings=["unified", "manual"])
    assert a == b and a.m1m2 == ((4, 8), (16, 4)) and a.pairs == (("art", "real"),)
    assert Sweep.parse("full-benchmark") == Sweep.parse("benchmark") == Sweep()
    assert Sweep.parse("ablations", m1m2="", taus="").m1m2 == ()  # an empty axis is skipped
    with pytest.raises(ValueError, match="unknown method"):
        Sweep.parse("benchmark", methods="dapl,oracle")
    with pytest.raises(ValueError, match="source->target"):
        Sweep.parse("benchmark", pairs="real:art")


def test_pseudo_label_variants_change_only_the_labeller():
    """The ablation's pseudo axis: refresh and templates each alone, both together equal method dapl+, and the
    paper cell equal to the base DAPL run; MLflow's sweep axes name them."""
    base = resolve_config(workdir=PROJECT_ROOT)
    cell = {v: run_config(base, RunSpec("real", "art", 1, axis="pseudo", pseudo=v), "/r") for v in PSEUDO_VARIANTS}
    plus = run_config(base, RunSpec("real", "art", 1, "dapl+"), "/r")
    dapl = run_config(base, RunSpec("real", "art", 1, "dapl"), "/r")
    assert cell["paper"].digest(*RUN_SECTIONS) == dapl.digest(*RUN_SECTIONS)
    assert cell["refresh+templates"].digest(*RUN_SECTIONS) == plus.digest(*RUN_SECTIONS)
    assert (cell["refresh"].pseudo.refresh, cell["refresh"].pseudo.templates) == ("linear", None)
    assert (cell["templates"].pseudo.refresh, cell["templates"].pseudo.templates) == ("none", "toy-captions")
    for v in PSEUDO_VARIANTS:  # nothing but the pseudo section differs from DAPL
        assert cell[v].digest(*(s for s in RUN_SECTIONS if s != "pseudo")) == dapl.digest(
            *(s for s in RUN_SECTIONS if s != "pseudo"))
    axes = Run(RunSpec("real", "art", 1, axis="pseudo", pseudo="templates"), cell["templates"]).axes()
    assert (axes["sweep.refresh"], axes["sweep.templates"], axes["sweep.label"]) == ("none", "toy-captions",
                                                                                     "pseudo:templates")
    with pytest.raises(ValueError, match="pseudo-label variant"):
        Sweep.parse("ablations", pseudo="refresh,oracle")


def test_run_specs_carry_typed_overrides():
    base = resolve_config(workdir=PROJECT_ROOT)
    tau = run_config(base, RunSpec("real", "art", 3, axis="tau", tau=0.7), "/r")
    assert tau.pseudo.tau == 0.7 and tau.train.seed == 3 and str(tau.output_dir) == "/r/real_art/tau_0.7/seed3"
    grid = run_config(base, RunSpec("real", "art", 1, axis="m1m2", m1=8, m2=16), "/r")
    assert (grid.prompt.m1, grid.prompt.m2, grid.prompt.init) == (8, 16, None)  # the toy's init: N(0, 0.02²)
    worded = resolve_config(workdir=PROJECT_ROOT, overrides={"prompt.init": "a photo of a", "prompt.m1": 4})
    cells = [run_config(worded, RunSpec("real", "art", 1, axis="m1m2", m1=m1, m2=4), "/r") for m1 in (4, 8)]
    assert [c.prompt.init for c in cells] == ["a photo of a", None]  # words sized for M1 = 4 kept only there
    setting = run_config(base, RunSpec("real", "art", 1, axis="setting", setting="class_specific"), "/r")
    assert setting.prompt.setting is PromptSetting.class_specific and setting.prompt.init == base.prompt.init


def test_source_only_has_daplss_prompt_length_init_and_epochs():
    base = resolve_config(workdir=PROJECT_ROOT, overrides={"prompt.csc": True})
    so = run_config(base, RunSpec("real", "art", 1, "source_only"), "/r")
    assert (so.prompt.m1, so.prompt.m2) == (base.prompt.m1 + base.prompt.m2, 0)
    assert so.prompt.csc and so.prompt.init == base.prompt.init and so.prompt.init_std == base.prompt.init_std
    assert so.train == base.train and not so.pseudo.enabled
    dapl = run_config(base, RunSpec("real", "art", 1, "dapl"), "/r")
    assert dapl.prompt == base.prompt and dapl.pseudo.enabled


def test_dapl_plus_is_dapl_with_pseudo_labels_that_learn_and_off_by_default():
    base = resolve_config(workdir=PROJECT_ROOT)
    dapl = run_config(base, RunSpec("real", "art", 1, "dapl"), "/r")
    plus = run_config(base, RunSpec("real", "art", 1, "dapl+"), "/r")
    assert dapl.pseudo.refresh == "none" and dapl.pseudo.templates is None
    assert plus.pseudo.refresh == "linear" and plus.pseudo.templates == "toy-captions"
    assert plus.prompt == dapl.prompt and plus.train == dapl.train and plus.tau == dapl.tau
    assert "dapl+" not in Sweep.parse("benchmark").methods
    assert "dapl+" in Sweep.parse("benchmark", methods="dapl,dapl+").methods


def test_layers_preset_recipe_file_arguments(tmp_path):
    toy = resolve_config(workdir=tmp_path)
    assert recipe(toy)["prompt.m1"] == 16 and toy.train.epochs == 25 and toy.features.views == 4  # paper + registry
    assert toy.model.pretrained == str(TOY_CHECKPOINT)
    assert toy.data.root == tmp_path / "data" / "toy" and toy.data.manifest == tmp_path / "artifacts" / \
        "manifests" / "toy.parquet" and toy.features.cache_dir == tmp_path / "cache" / "features"
    f = tmp_path / "conf" / "c.yaml"
    f.parent.mkdir()
    f.write_text(yaml.safe_dump({"preset": "official", "train": {"epochs": 9, "lr": 0.01}, "data": {"root": "d"}}))
    c = resolve_config(f, epochs=11, overrides={"train.lr": 0.02}, workdir=tmp_path / "wd")
    assert c.preset == "official" and c.prompt.text == "official" and c.train.loss == "kway"  # preset
    assert c.features.views == 4 and c.features.num_workers == 0  # recipe above the preset
    assert c.train.epochs == 11 and c.train.lr == 0.02  # arguments above the file
    assert c.data.root == tmp_path / "conf" / "d"  # a file's path: relative to the file
    assert c.features.cache_dir == tmp_path / "wd" / "cache" / "features"  # a default: relative to workdir
    assert resolve_config(f, preset="paper", workdir=tmp_path).prompt.text == "paper"  # re-based, file kept
    oh = resolve_config(dataset="office_home", backbone="RN50-quickgelu", root="elsewhere/oh", workdir=tmp_path)
    assert oh.model.pretrained == "openai" and oh.data.root == tmp_path / "elsewhere" / "oh"
    assert oh.data.manifest.name.startswith("office_home-") and oh.prompt.m1 == 16  # no recipe: the preset


def test_missing_weights_file_is_an_error_except_the_toy_checkpoint(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"dapl": {"model": {"pretrained": "weights/toy-clip.pt"}}}))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "weights" / "toy-clip.pt")):
        resolve_config(f, workdir=tmp_path / "elsewhere")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "toy-clip.pt").write_bytes(b"x")
    assert resolve_config(f, workdir=tmp_path / "elsewhere").model.pretrained == str(
        tmp_path / "weights" / "toy-clip.pt")
    assert resolve_config(weights=str(TOY_CHECKPOINT), workdir=tmp_path).model.pretrained == str(TOY_CHECKPOINT)


@pytest.mark.parametrize("kind", ["benchmark", "ablations"])
def test_params_yaml_is_the_resolved_default(kind, monkeypatch):
    """`dapl <kind> -c params.yaml` and `dapl <kind>` plan the same runs with the same configs."""
    monkeypatch.chdir(PROJECT_ROOT)
    with_file = cli.plan_of(cli.build_parser().parse_args([kind, "-c", "params.yaml"]), TOY_DOMAINS)
    plain = cli.plan_of(cli.build_parser().parse_args([kind]), TOY_DOMAINS)
    assert with_file[1] == plain[1] == default_runs_dir(kind, plain[0], PROJECT_ROOT)
    assert [(r.spec, r.config) for r in with_file[2]] == [(r.spec, r.config) for r in plain[2]]


def test_env_sh_sets_the_python_env_defaults():
    """scripts/env.sh (shell) and dapl.paths.ENV_DEFAULTS (Python: flows, tasks, CLI) set the same values."""
    import re

    from dapl.paths import ENV_DEFAULTS

    text = (PROJECT_ROOT / "scripts" / "env.sh").read_text()
    found = dict(re.findall(r"\b([A-Z_]+)=\"?\$\{[A-Z_]+:-([^}]*)\}\"?", text))  # VAR="${VAR:-value}"
    found |= dict(re.findall(r"\b([A-Z_]+)=([A-Za-z0-9_]+)(?=\s|$)", text))  # VAR=value
    assert {k: found.get(k) for k in ENV_DEFAULTS} == ENV_DEFAULTS


def test_diverged_runs_names_each_flagged_run_once():
    from dapl.sweep import flag_warning, flagged_runs

    rows = [{"pair": "clipart->art", "method": "dapl", "seed": 3, "diverged": True},
            {"pair": "clipart->art", "method": "dapl", "seed": 1, "diverged": False},
            {"pair": "real->art", "method": "zero_shot", "seed": 1}]
    assert flagged_runs(rows, "diverged") == ["clipart->art dapl seed 3"]
    assert flag_warning(flagged_runs(rows, "diverged"), "diverged").endswith(
        "1 run(s) diverged (see their metrics.json; tag dapl.diverged in MLflow): clipart->art dapl seed 3")


def test_dvc_lock_records_the_data_that_data_dvc_tracks():
    """The committed dvc.lock's dataset dependency must describe the bytes data.dvc tracks (the toy world, which a
    fresh clone regenerates): a stale entry makes every `dvc repro` rewrite dvc.lock and every later run dirty."""
    import yaml

    from dapl.paths import PROJECT_ROOT

    data = yaml.safe_load((PROJECT_ROOT / "data.dvc").read_text())["outs"][0]
    lock = yaml.safe_load((PROJECT_ROOT / "dvc.lock").read_text())
    root = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["dapl"]["data"]["root"]
    assert root.startswith(data["path"] + "/"), (root, data["path"])
    entries = [d for stage in lock["stages"].values() for d in stage.get("deps", []) if d["path"] == root]
    assert entries, f"no stage of dvc.lock depends on {root}"
    for dep in entries:  # the same files: a folder one level down has the same size and count
        assert (dep["size"], dep["nfiles"]) == (data["size"], data["nfiles"]), dep


def test_the_toy_recipe_is_data_and_ships_with_the_package():
    """The toy's recipe is dapl/recipes/toy.yaml (plus the registry's τ), and an installed dapl carries it."""
    import tomllib
    from fnmatch import fnmatch

    from dapl.overrides import flatten
    from dapl.resolve import RECIPES_DIR, dataset_recipe, recipe_file

    written = flatten(yaml.safe_load(recipe_file("toy").read_text()))
    assert written and "train.lr" in written and dataset_recipe("toy") == {"pseudo.tau": 0.5, **written}
    toy = resolve_config(workdir=PROJECT_ROOT)
    assert {k: toy.flat()[k] for k in written} == written
    assert dataset_recipe("office_home") == {"pseudo.tau": 0.6}  # no recipe file: the preset as it is
    globs = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dapl"]
    for f in RECIPES_DIR.iterdir():
        assert any(fnmatch(str(f.relative_to(PROJECT_ROOT / "dapl")), g) for g in globs), f


def test_dapl_config_says_where_each_value_came_from(tmp_path, monkeypatch):
    """Three layers: the preset (with the dataset's recipe), the file, the overrides; the printed YAML is the
    resolved config itself."""
    from dapl.resolve import config_layers, format_config

    monkeypatch.chdir(tmp_path)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"train": {"epochs": 9}, "features": {"views": 2}}))
    layers = config_layers(f, preset="official", overrides={"train.epochs": 3}, workdir=tmp_path)
    origins = layers.origins()
    assert origins["prompt.text"] == "preset official" and origins["prompt.m1"] == "preset official"
    assert origins["train.lr"] == "recipe " + str(PROJECT_ROOT / "dapl" / "recipes" / "toy.yaml")
    assert origins["pseudo.tau"] == "the toy dataset (registry)"
    assert origins["features.views"] == "c.yaml" and origins["train.epochs"] == "override"
    assert origins["preset"] == "override" and set(origins) == set(layers.resolve().flat())
    text = format_config(layers)
    assert yaml.safe_load(text) == layers.resolve().to_dict()
    assert "  epochs: 3  # override\n" in text and "  views: 2  # c.yaml\n" in text
