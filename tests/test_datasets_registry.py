"""Registry facts the rest of the pipeline relies on."""

from __future__ import annotations

import pytest

from dapl.datasets import REGISTRY, get_spec, list_datasets
from dapl.datasets.registry import display_name


def test_known_datasets():
    assert set(list_datasets()) == {"office_home", "visda2017", "domainnet", "mini_domainnet", "office31",
                                    "folder", "toy"}
    assert get_spec("Office-Home") is REGISTRY["office_home"] and get_spec("visda").name == "visda2017"
    with pytest.raises(KeyError, match="known: office_home"):
        get_spec("imagenet")


def test_office_home():
    s = get_spec("office_home")
    assert len(s.class_folders) == len(set(s.class_folders)) == 65
    assert list(s.class_folders) == sorted(s.class_folders)  # Dassl/DAPL order: Python-sorted folder names
    assert s.classes[:2] == ("alarm clock", "backpack") and "postit notes" in s.classes
    assert s.domain("Real World").key == "real_world" and s.domain("real_world").folder == "Real_World"
    assert s.tau == 0.6 and s.metric == "accuracy"
    short = {"art": "A", "clipart": "C", "product": "P", "real_world": "R"}
    assert [short[a] + short[b] for a, b in s.pairs] == [
        "AC", "AP", "AR", "CA", "CP", "CR", "PA", "PC", "PR", "RA", "RC", "RP"]
    assert not s.downloadable and s.resources[0].manual


def test_visda_office31_domainnet():
    v = get_spec("visda2017")
    assert len(v.classes) == 12 and v.metric == "mean_per_class" and v.tau == 0.5
    assert v.pairs == (("synthetic", "real"),) and v.domain("synthetic").split == "train"
    assert v.downloadable
    o = get_spec("office31")
    assert len(o.classes) == 31 == len(set(o.classes)) and len(o.pairs) == 6
    dn = get_spec("domainnet")
    assert len(dn.domains) == 6 and len(dn.pairs) == 30 and dn.class_folders == ()  # from split files
    assert {r.filename for r in dn.resources} >= {"clipart.zip", "clipart_train.txt", "sketch_test.txt"}
    mini = get_spec("mini_domainnet")
    assert mini.domain_keys == ("clipart", "painting", "real", "sketch") and len(mini.pairs) == 12


def test_display_name():
    assert display_name("Alarm_Clock") == "alarm clock" and display_name("TV") == "tv"
