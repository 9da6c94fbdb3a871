"""MeasureSettings validation (clear errors before any work) and the Environment key."""
import dataclasses

import pytest
import torch

from explorer.measure.encoder import measure_encoder
from explorer.measure.prefill import measure_prefill
from explorer.measure.projector import measure_projector
from explorer.measure.settings import Environment, MeasureSettings, current_environment, thread_scope, usable_cores
from explorer.measure.timing import time_callable
from explorer.measure.ttft import measure_point

BAD = [
    (dict(device="gpu"), "device='gpu'"),
    (dict(device="cuda:x"), "device='cuda:x'"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(dtype="fp16"), "dtype='fp16'"),
    (dict(threads=0), "threads=0"),
    (dict(threads=-2), "threads=-2"),
    (dict(threads=1.5), "threads=1.5"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(compile="yes"), "compile='yes'"),
    (dict(warmup_s=-1), "warmup_s=-1"),
    (dict(min_iters=0), "min_iters=0"),
    (dict(min_iters=10, max_iters=5), "max_iters=5"),
    (dict(max_time_s=0), "max_time_s=0"),
    (dict(target_rel_ci=0), "target_rel_ci=0"),
    (dict(target_rel_ci=2.0), "target_rel_ci=2.0"),
]


@pytest.mark.parametrize("changes,needle", BAD, ids=[n for _, n in BAD])
def test_bad_settings_name_field_value_and_allowed(changes, needle):
    with pytest.raises(ValueError) as err:
        MeasureSettings(**changes)  # refused when made: an invalid MeasureSettings cannot exist
    text = str(err.value)
    assert needle in text
    assert ":" in text and len(text.split(":", 1)[1].strip()) > 5  # says what is allowed


def test_what_depends_on_the_machine_is_checked_apart():
    cores = usable_cores()
    made = MeasureSettings(device="cpu", threads=cores + 1)  # a valid value: another machine has the cores
    with pytest.raises(ValueError, match=f"threads={cores + 1}.*<= {cores}"):
        made.check_on_machine()
    assert MeasureSettings(device="cpu", threads=cores).check_on_machine().threads == cores
    with pytest.raises(ValueError, match="threads=5000"):
        MeasureSettings(threads=5000)  # over MAX_THREADS on any machine: refused when made
    with pytest.raises(ValueError, match="threads=0"):
        MeasureSettings(device="cpu").replace(threads=0)  # replace makes a new one: checked again


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device='cuda'.*not available"):
        MeasureSettings(device="cuda").check_on_machine()


def test_auto_device_and_defaults():
    s = MeasureSettings().check_on_machine()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert s.resolve_device().type == expected
    assert s.reparameterize is True and s.target_rel_ci == 0.02 and s.threads is None


def test_bad_settings_fail_before_any_model_is_built(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("built a model before validating the settings")

    import explorer.measure.prefill as prefill_mod
    import explorer.models as models

    monkeypatch.setattr(models, "build_encoder", forbidden)
    monkeypatch.setattr(prefill_mod, "build_llm", forbidden)
    monkeypatch.setattr(prefill_mod, "count_prefill_flops", forbidden)
    bad = MeasureSettings(threads=usable_cores() + 1)  # valid values, more threads than this machine has
    too_many = f"threads={usable_cores() + 1}"
    with pytest.raises(ValueError, match=too_many):
        measure_encoder("fastvithd", {}, 256, bad)
    with pytest.raises(ValueError, match="resolution=0"):
        measure_encoder("fastvithd", {}, 0, MeasureSettings(device="cpu"))
    with pytest.raises(ValueError, match=too_many):
        measure_projector(3072, 896, 16, bad)
    with pytest.raises(ValueError, match=too_many):
        measure_prefill("qwen2-0.5b", 64, bad)
    with pytest.raises(ValueError, match="llm='nope'"):
        measure_prefill("nope", 64, MeasureSettings(device="cpu"))
    with pytest.raises(ValueError, match="llm='nope'"):
        measure_point("fastvithd", {}, 256, "nope", 16, MeasureSettings(device="cpu"))
    with pytest.raises(ValueError, match="dtype='double'"):
        measure_point("fastvithd", {}, 256, "qwen2-0.5b", 16, MeasureSettings(dtype="double"))
    ran = []
    with pytest.raises(ValueError, match="max_iters"):
        time_callable(lambda: ran.append(1), MeasureSettings(min_iters=5, max_iters=1))
    assert not ran


def test_environment_key_is_stable_and_discriminating():
    base = MeasureSettings(device="cpu", threads=1)
    env = current_environment(base)
    assert isinstance(env, Environment)
    assert env.device_type == "cpu" and env.threads == 1 and env.dtype == "float32"
    assert env.torch_version == torch.__version__ and env.device
    assert env.key == current_environment(MeasureSettings(device="cpu", threads=1)).key
    assert len(env.key) == 16
    # protocol caps change precision, not the value: same key
    assert env.key == current_environment(base.replace(max_time_s=99, min_iters=9, max_iters=99)).key
    for change in (dict(dtype="bfloat16"), dict(threads=2), dict(batch_size=4), dict(compile=True),
                   dict(reparameterize=False), dict(channels_last=True)):
        assert current_environment(base.replace(**change)).key != env.key, change
    assert set(env.to_dict()) == {f.name for f in dataclasses.fields(Environment)}


def test_thread_scope_sets_and_restores():
    before = torch.get_num_threads()
    with thread_scope(MeasureSettings(device="cpu", threads=1)) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with thread_scope(MeasureSettings(device="cpu")) as n:  # None: leave torch's default alone
        assert n == before
