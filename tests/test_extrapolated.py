"""No published number on an unpublished model: the extrapolated five-stage ConvNeXt-XXL."""
from __future__ import annotations

import pandas as pd
import pytest

from explorer.commands.encoders import encoder_table
from explorer.data.reference import attach_accuracy, extrapolation, read_accuracy_csv


def _rows(*knobs: str) -> pd.DataFrame:
    return pd.DataFrame({"encoder": ["convnext_xxl"] * len(knobs), "knobs": list(knobs), "resolution": 256,
                         "llm": "qwen2-0.5b"})


def test_the_paper_point_joins_only_the_published_four_stage_tower():
    out = attach_accuracy(_rows("{}", '{"extra_stage": false}', '{"depths": [3, 4, 30, 3], "extra_stage": false}'))
    assert pd.isna(out.accuracy[0])  # the extrapolated default: no published number
    assert out.accuracy[1] == 51.9 and out.accuracy_source[1] == "published:fastvlm-readme-figure"
    assert out.accuracy[2] == 51.9  # the same published tower, spelled out


def test_extrapolation_is_named_and_labelled():
    assert "extrapolated" in extrapolation("convnext_xxl")
    assert extrapolation("convnext_xxl", '{"extra_stage": false}') is None
    assert extrapolation("convnext_l") is None and extrapolation("fastvithd") is None
    labels = {r["name"]: r["model"] for r in encoder_table(["convnext_xxl", "convnext_l"])}
    assert labels["convnext_xxl"] == "extrapolated*" and labels["convnext_l"] == "published"


def test_a_published_table_cannot_name_the_extrapolated_model(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("encoder,resolution,llm,metric,value\nconvnext_xxl,256,qwen2-0.5b,avg5,51.9\n")
    read_accuracy_csv(path, origin="user")  # a user's own number on any model is the user's call
    with pytest.raises(ValueError, match="not a published model"):
        read_accuracy_csv(path, origin="published")
