"""Search spaces: keys, enumeration counts and every validation error path."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import sweep_fakes as F
from explorer.data.space import (DesignPoint, Space, SpaceError, canonical_json, digest, enumerate_points, list_spaces,
                            load_space)

REPO = Path(__file__).resolve().parent.parent


def toy(**extra):
    """A space of fake families (no models built)."""
    raw = {"name": "toy", "encoders": {"toy": {"knobs": {"width": [1, 2], "depth": [1, 2, 3]}}},
           "resolutions": [64, 128], "llms": ["llm-a", "llm-b"], "text_tokens": [0, 8]}
    raw.update(extra)
    return raw


def load_toy(raw, **kw):
    return load_space(raw, shape_fn=F.shape, check_models=False, **kw)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- DesignPoint -------------------------------------------------------------------------------


def test_design_point_key_is_stable_and_canonical():
    p = DesignPoint.make("fastvithd", {"width_mult": 1.0, "depth_mult": 0.5}, 512, "qwen2-0.5b", 32)
    q = DesignPoint.make("fastvithd", {"depth_mult": 0.5, "width_mult": 1}, 512, "qwen2-0.5b", 32)
    assert p.knobs == (("depth_mult", 0.5), ("width_mult", 1.0))
    assert p == q and hash(p) == hash(q) and p.key == q.key
    # The key depends only on the canonical JSON: pinned so that a change is noticed (results of
    # earlier runs are found by it).
    assert canonical_json(p.to_dict()) == ('{"encoder":"fastvithd","knobs":{"depth_mult":0.5,"width_mult":1},'
                                           '"llm":"qwen2-0.5b","resolution":512,"text_tokens":32}')
    assert p.key == digest(p.to_dict()) == "aede37d0c074bba1"
    assert len(p.key) == 16
    assert DesignPoint.from_dict(p.to_dict()) == p
    with pytest.raises(Exception):
        p.resolution = 3  # type: ignore[misc]


def test_list_valued_knobs_are_hashable():
    p = DesignPoint.make("fastvithd", {"depths": [2, 4, 8, 2, 2]}, 256, "qwen2-0.5b", 0)
    assert p.knobs == (("depths", (2, 4, 8, 2, 2)),)
    assert p.knob_dict() == {"depths": [2, 4, 8, 2, 2]}
    assert {p: 1}[DesignPoint.from_dict(p.to_dict())] == 1


# -- enumeration ---------------------------------------------------------------------------------


def test_enumeration_count_cartesian_product():
    space = load_toy(toy())
    points = enumerate_points(space, shape_fn=F.shape)
    # width 2 x depth 3 x resolutions 2 x llms 2 x text_tokens 2
    assert len(points) == 2 * 3 * 2 * 2 * 2 == 48
    assert len(set(points)) == len(points)
    assert points == enumerate_points(space, shape_fn=F.shape)  # stable order


def test_enumeration_with_families_ranges_exclusions_and_constraints():
    raw = toy(encoders={"toy": {"knobs": {"width": [1, 2], "depth": [1, 2, 3]}},
                        "toy2": {"resolutions": {"start": 64, "stop": 256, "step": 64}}})
    space = load_toy(raw)
    assert space.encoders[1].resolutions == (64, 128, 192, 256)  # stop is inclusive
    # toy: 2*3 configs x 2 res x 2 llms x 2 tt = 48; toy2: 4 res x 2 x 2 = 16
    assert len(enumerate_points(space, shape_fn=F.shape)) == 64
    raw["exclude"] = [{"encoder": "toy", "width": 2, "resolution": 64}]
    space = load_toy(raw)
    # drops width=2 at 64 px: 3 depths x 2 llms x 2 tt = 12
    assert len(enumerate_points(space, shape_fn=F.shape)) == 52
    raw["constraints"] = {"max_visual_tokens": 16}
    space = load_toy(raw)
    # fake tokens = (res/32)^2: 192 px (36) and 256 px (64) of toy2 go: 2 res x 2 x 2 = 8
    points = enumerate_points(space, shape_fn=F.shape)
    assert len(points) == 44
    assert max(p.resolution for p in points) == 128
    raw["constraints"] = {"max_params_m": 15}  # fake params = 10 * width * depth (toy2: 10)
    points = enumerate_points(load_toy(raw), shape_fn=F.shape)
    # toy keeps width=1,depth=1 only: 2 res x 4 = 8, minus none excluded (width 2 gone anyway); toy2: 16
    assert len(points) == 8 + 16


def test_list_form_entries_and_scalars():
    raw = {"encoders": [{"family": "toy", "knobs": {"width": 2}, "resolutions": 64},
                        {"name": "toy", "knobs": {"width": [1]}, "resolutions": [64, 64, 128]}],
           "llms": "llm-a", "text_tokens": 4}
    space = load_toy(raw)
    assert space.name == "space"
    assert [e.resolutions for e in space.encoders] == [(64,), (64, 128)]
    assert len(enumerate_points(space, shape_fn=F.shape)) == 3


def test_duplicate_points_from_two_entries_count_once():
    raw = {"encoders": [{"family": "toy", "knobs": {"width": [1, 2]}}, {"family": "toy", "knobs": {"width": [2, 3]}}],
           "resolutions": [64], "llms": ["llm-a"]}
    assert len(enumerate_points(load_toy(raw), shape_fn=F.shape)) == 3


def test_load_from_omegaconf_and_file(tmp_path):
    node = OmegaConf.create(toy())
    assert len(enumerate_points(load_toy(node), shape_fn=F.shape)) == 48
    path = write(tmp_path, OmegaConf.to_yaml(OmegaConf.create(toy(name=None))), "mine.yaml")
    space = load_toy(path)
    assert space.name == "mine" and space.source == str(path)


# -- validation ---------------------------------------------------------------------------------


def errors_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "bad.yaml" in message  # every error names the file
    return message


def test_unknown_encoder(tmp_path):
    msg = errors_of(tmp_path, "encoders: {nosuch: {}}\nresolutions: [256]\nllms: [qwen2-0.5b]\n")
    assert "encoders.nosuch.family='nosuch'" in msg and "unknown encoder" in msg and "fastvithd" in msg


def test_bad_knob_name(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {knobs: {widht_mult: [1.0]}}}\nresolutions: [256]\n"
                              "llms: [qwen2-0.5b]\n")
    assert "encoders.fastvithd.knobs.widht_mult" in msg and "width_mult" in msg  # the allowed list
    msg = errors_of(tmp_path, "encoders: {vit_l14_clip: {knobs: {foo: [1]}}}\nresolutions: [336]\n"
                              "llms: [qwen2-0.5b]\n")
    assert "encoders.vit_l14_clip.knobs.foo=1" in msg and "allowed:" in msg and "depth" in msg


def test_bad_knob_value(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {knobs: {width_mult: [1.0, -0.5]}}}\nresolutions: [256]\n"
                              "llms: [qwen2-0.5b]\n")
    assert "encoders.fastvithd.knobs.width_mult[1]=-0.5" in msg and "(0, 8]" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {knobs: {attention_stages: [2, 7]}}}\n"
                              "resolutions: [256]\nllms: [qwen2-0.5b]\n")
    assert "attention_stages[1]=7" in msg and "an integer from 0 to 4" in msg


def test_bad_resolution(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256, -3, 'x']\nllms: [qwen2-0.5b]\n")
    assert "resolutions[1]=-3" in msg and "resolutions[2]='x'" in msg and "positive integer" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: {start: 512, stop: 256, step: 64}\n"
                              "llms: [qwen2-0.5b]\n")
    assert "resolutions.stop=256" in msg and "start=512" in msg
    # a resolution the encoder itself refuses (smaller than a ViT patch)
    msg = errors_of(tmp_path, "encoders: {vit_l14_clip: {resolutions: [336, 10]}}\nllms: [qwen2-0.5b]\n")
    assert "encoders.vit_l14_clip.resolutions[1]=10" in msg and "patch=14" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nllms: [qwen2-0.5b]\n")
    assert "resolutions=None: missing" in msg


def test_unknown_llm(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256]\nllms: [qwen2-0.5b, gpt-5]\n")
    assert "llms[1]='gpt-5'" in msg and "qwen2-0.5b" in msg and "config.json" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256]\nllms: []\n")
    assert "llms=[]" in msg and "non-empty" in msg


def test_bad_constraints_and_other_keys(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256]\nllms: [qwen2-0.5b]\n"
                              "constraints: {max_visual_tokens: 0, max_flops: 3, max_params_m: -1}\n"
                              "text_tokens: [-1]\nexclude: [{bogus: 1}]\nmeasure: {thredas: 2}\ncolour: red\n")
    for needle in ("constraints.max_visual_tokens=0: a positive integer",
                   "constraints.max_flops=3: unknown constraint; allowed: max_visual_tokens, max_params_m",
                   "constraints.max_params_m=-1", "text_tokens[0]=-1", "exclude[0].bogus=1: unknown key",
                   "measure.thredas=2: unknown measurement setting", "threads",
                   "colour='red': unknown key; allowed: name"):
        assert needle in msg, needle


def test_empty_product(tmp_path):
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256, 512]\nllms: [qwen2-0.5b]\n"
                              "constraints: {max_visual_tokens: 4}\n")
    assert "no design points" in msg and "2 dropped by `constraints`" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {}}\nresolutions: [256]\nllms: [qwen2-0.5b]\n"
                              "exclude: [{encoder: fastvithd}]\n")
    assert "no design points" in msg and "1 excluded" in msg
    msg = errors_of(tmp_path, "encoders: {fastvithd: {knobs: {width_mult: []}}}\nresolutions: [256]\n"
                              "llms: [qwen2-0.5b]\n")
    assert "knobs.width_mult=[]: empty list" in msg


def test_invalid_yaml_and_unknown_space(tmp_path):
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(write(tmp_path, "encoders: [\n"))
    with pytest.raises(SpaceError, match="unknown space 'nope'.*fastvithd"):
        load_space("nope")


# -- the shipped spaces ---------------------------------------------------------------------------


def test_shipped_spaces_are_valid():
    spaces = list_spaces()
    assert {"fastvithd", "fastvithd_full", "paper_baselines", "llava15"} <= set(spaces)
    assert spaces["fastvithd"].parent == REPO / "search_spaces"
    counts = {}
    for name in ("fastvithd", "paper_baselines", "llava15"):
        space = load_space(name)
        assert isinstance(space, Space) and space.name == name
        counts[name] = len(enumerate_points(space))
    # fastvithd: (2 widths x 2 depths minus the excluded (0.75, 0.5)) x 3 res x 2 llms
    assert counts["fastvithd"] == (2 * 2 - 1) * 3 * 2
    # paper_baselines: 4 + 4 + 1 + 1 + 1 (encoder, resolution) pairs with one LLM
    assert counts["paper_baselines"] == 11
    assert counts["llava15"] == 1 + 5
    full = load_space("fastvithd_full", check_models=False)
    assert full.encoders[0].resolutions == (256, 512, 768, 1024, 1280, 1536)
    assert len(enumerate_points(full)) == 3 * 3 * 6 * 3
