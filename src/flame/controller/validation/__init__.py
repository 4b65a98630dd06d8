"""Pure validation of control-plane requests: schemas, code bundles, datasets, jobs.

Every function checks protobuf messages or bytes without I/O and raises one
domain error (`flame.rpc.errors`) listing all the problems it found as field
violations, each naming the offending field path.
"""

from __future__ import annotations

from flame.controller.validation.code import (
    CODE_INVALID,
    CODE_ROLE_MISSING,
    CODE_TOO_LARGE,
    CodeBundleInfo,
    check_roles_have_code,
    inspect_code_bundle,
    role_bundle,
)
from flame.controller.validation.dataset import (
    DATASET_INVALID,
    REALM_NOT_RESOLVED,
    resolve_realm,
    validate_dataset,
)
from flame.controller.validation.job import JOB_INVALID, validate_job_spec
from flame.controller.validation.names import (
    IdentifierKind,
    NameKind,
    validate_identifier,
    validate_name,
)
from flame.controller.validation.schema import SCHEMA_INVALID, validate_schema

__all__ = [
    "CODE_INVALID",
    "CODE_ROLE_MISSING",
    "CODE_TOO_LARGE",
    "DATASET_INVALID",
    "JOB_INVALID",
    "REALM_NOT_RESOLVED",
    "SCHEMA_INVALID",
    "CodeBundleInfo",
    "IdentifierKind",
    "NameKind",
    "check_roles_have_code",
    "inspect_code_bundle",
    "resolve_realm",
    "role_bundle",
    "validate_dataset",
    "validate_identifier",
    "validate_job_spec",
    "validate_name",
    "validate_schema",
]
