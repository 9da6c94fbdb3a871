"""Latency for devices not at hand: an op-level roofline cost model with calibrated efficiencies.

- :mod:`~explorer.predict.trace`: operator traces (FLOPs, bytes, class) on the meta device;
- :mod:`~explorer.predict.opclass`: the operator classes;
- :mod:`~explorer.predict.profile`: device profiles (``explorer/devices/*.yaml``);
- :mod:`~explorer.predict.model`: the roofline-with-efficiency arithmetic;
- :mod:`~explorer.predict.observations` / :mod:`~explorer.predict.calibrate`: fitting a profile to
  measurements in a store;
- :mod:`~explorer.predict.roof`: the measured roofs of the machine at hand;
- :mod:`~explorer.predict.frame`: predicted results tables, kept apart from measured ones;
- :mod:`~explorer.predict.validate`: calibrate-on-part, predict-the-rest error figures.

See docs/prediction.md.
"""
from explorer.predict.frame import PREDICTED_COLUMNS, PredictOptions, check_single_source, mark_measured, \
    predict_space, side_by_side
from explorer.predict.model import Prediction, op_seconds, predict_trace
from explorer.predict.opclass import COMPUTE_CLASSES, OP_CLASSES, classify
from explorer.predict.profile import DeviceProfile, ProfileError, Sourced, list_profiles, load_profile, \
    profile_from_dict, write_profile
from explorer.predict.trace import OpRecord, OpTrace, trace_encoder, trace_module, trace_prefill, trace_projector

__all__ = ["PREDICTED_COLUMNS", "PredictOptions", "check_single_source", "mark_measured", "predict_space",
           "side_by_side", "Prediction", "op_seconds", "predict_trace", "COMPUTE_CLASSES", "OP_CLASSES", "classify",
           "DeviceProfile", "ProfileError", "Sourced", "list_profiles", "load_profile", "profile_from_dict",
           "write_profile", "OpRecord", "OpTrace", "trace_encoder", "trace_module", "trace_prefill", "trace_projector"]
