"""`explorer validate`: the assembled VLM on tiny models, and bad input."""
from __future__ import annotations

import json

import pytest
import torch

from explorer.commands import validate as validate_cmd
from explorer.measure.e2e import assemble_vlm, validate_point
from explorer.measure.settings import MeasureSettings
from explorer.models.llm import get_llm_spec

TINY_LLM = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000, "tie_word_embeddings": True,
            "max_position_embeddings": 4096}
KNOBS = {"depths": [1, 1, 1, 1, 1], "widths": [16, 32, 64, 64, 128]}
QUICK = MeasureSettings(device="cpu", threads=1, warmup_s=0.0, warmup_iters=1, min_iters=2, max_iters=2,
                        source_image="320x240")


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLM))
    return get_llm_spec(path)


def test_assembled_vlm_generates_the_token_its_parts_predict(tiny):
    vlm = assemble_vlm("fastvithd", KNOBS, tiny, QUICK)
    images = torch.randn(1, 3, 128, 128)
    ids = torch.randint(0, 1000, (1, 5))
    with torch.inference_mode():
        # By hand: encoder tokens -> projector -> prepended to the text embeddings -> last logits.
        visual = vlm.projector(vlm.encoder(images))
        assert visual.shape == (1, 4, 64)  # ceil(128/64)^2 tokens at the LLM's width
        embeds = torch.cat([visual, vlm.llm.get_input_embeddings()(ids)], 1)
        expected = vlm.llm(inputs_embeds=embeds, use_cache=False).logits[:, -1].argmax(-1)
        assert vlm.first_token(images, ids).flatten().tolist() == expected.tolist()
        assert vlm.first_token(images, ids, lm_head="all").flatten().tolist() == expected.tolist()


def test_validate_point_measures_both_sides(tiny):
    check = validate_point("fastvithd", KNOBS, 128, tiny, 5, QUICK)
    assert set(check.parts) == {"preprocess", "encoder", "projector", "prefill"} and check.visual_tokens == 4
    assert check.rounds == 2 and all(t.n == 2 for t in check.parts.values()) and check.end_to_end.n == 2
    # the ratio is the median of per-round (sum of parts) / end-to-end: with two rounds, their mean
    assert check.factorised.median_ms == pytest.approx(sum(t.mean_ms for t in check.parts.values()))
    assert check.ratio_p10 <= check.ratio <= check.ratio_p90
    with pytest.raises(ValueError, match="runtime='onnxruntime'"):
        validate_point("fastvithd", KNOBS, 128, tiny, 5, QUICK.replace(runtime="onnxruntime"))


@pytest.mark.parametrize("args,needle", [
    (["resolutions=[0]"], "resolutions=[0]"),
    (["tolerance=2"], "tolerance=2"),
    (["measure.runtime=tensorrt"], "runtime='tensorrt'"),
    (["llm=nope"], "llm='nope'"),
    (["encoder=nope"], "unknown encoder 'nope'"),
])
def test_bad_input_exits_2_with_a_message(args, needle, capsys):
    assert validate_cmd.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
