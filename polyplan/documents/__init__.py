"""Versioned JSON documents that connect the pipeline: profile.json -> plan.json -> results.json.

Pure Python (no torch): the planner reads profiles without loading a model."""

from polyplan.documents.files import DocumentError, atomic_write_bytes, atomic_write_json, read_json
from polyplan.documents.plan import PLAN_SCHEMA, PLAN_VERSION, Plan, file_sha256
from polyplan.documents.profile import (
    PROFILE_SCHEMA,
    PROFILE_VERSION,
    AcceptancePair,
    Candidate,
    LatencyCurve,
    Profile,
)

__all__ = [
    "AcceptancePair",
    "Candidate",
    "DocumentError",
    "LatencyCurve",
    "PLAN_SCHEMA",
    "PLAN_VERSION",
    "Plan",
    "Profile",
    "PROFILE_SCHEMA",
    "PROFILE_VERSION",
    "atomic_write_bytes",
    "atomic_write_json",
    "file_sha256",
    "read_json",
]
