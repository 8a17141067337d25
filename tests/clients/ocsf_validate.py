"""Validates OCSF documents, one JSON object per line on stdin, against the
OCSF 1.5.0 schema as the ocsf-emitter package models it (installed in the
test virtualenv by scripts/install-test-deps.sh).

Each document is parsed into the model of its class_uid (types, required
attributes, enum ids) and checked for OCSF's invariants (category, type_uid
= class_uid * 100 + activity_id, sibling names, schema version). The models
allow attributes the schema does not define; this script does not: every
key of every object must be an attribute of that object in the schema
(except under `unmapped`, which OCSF leaves free). Prints one line per
document and exits 1 if any is invalid.
"""

import json
import sys
import typing

import pydantic
import ocsf_emitter
from ocsf_emitter import _models


def model_for(class_uid):
    for name in dir(_models):
        cls = getattr(_models, name)
        if not (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)):
            continue
        field = cls.model_fields.get("class_uid")
        if field is None:
            continue
        ann = field.annotation
        values = [m.value for m in ann] if isinstance(ann, type) and hasattr(ann, "__members__") else []
        if class_uid in values:
            return cls
    return None


def models_in(annotation):
    """The pydantic models an annotation allows (through Optional, list)."""
    out = []
    origin = typing.get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
            out.append(annotation)
        return out
    for arg in typing.get_args(annotation):
        out.extend(models_in(arg))
    return out


def unknown_keys(model, value, path):
    problems = []
    if isinstance(value, list):
        for n, item in enumerate(value):
            problems += unknown_keys(model, item, f"{path}[{n}]")
        return problems
    if not isinstance(value, dict):
        return problems
    fields = {}
    for name, field in model.model_fields.items():
        fields[field.alias or name] = field
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not an attribute of {model.__name__}")
            continue
        if key == "unmapped":
            continue
        for sub in models_in(fields[key].annotation):
            problems += unknown_keys(sub, item, f"{path}.{key}")
            break
    return problems


def main():
    bad = 0
    for n, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        doc = json.loads(line)
        model = model_for(doc.get("class_uid"))
        if model is None:
            print(f"{n}: class_uid {doc.get('class_uid')} is not an OCSF class")
            bad += 1
            continue
        problems = unknown_keys(model, doc, model.__name__)
        try:
            ocsf_emitter.validate(model.model_validate(doc))
        except Exception as e:  # the validator's own errors name the fields
            problems.append(str(getattr(e, "field_errors", None) or e))
        if problems:
            bad += 1
            print(f"{n}: {model.__name__} INVALID: " + "; ".join(problems))
        else:
            print(f"{n}: {model.__name__} valid (OCSF {ocsf_emitter.OCSF_SCHEMA_VERSION})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
