"""OCSF rendering of audit records: API Activity (class_uid 6003), OCSF 1.1.

A pure mapping, documented in docs/audit.md. Request records (``authorized``,
``completed``, ``denied``) become API Activity events: the workload is the
actor (SPIFFE ID as ``actor.user.uid``, its owner as ``actor.user.org.name``),
the Bedrock operation is ``api.operation`` of service ``bedrock-runtime``, the
model ARN is the resource, the caller's address is ``src_endpoint`` and the
outcome is ``status``. Every other field of the native record is kept under
``unmapped`` so nothing the SOC could need is lost. Chain records
(``chain_start``, ``checkpoint``) and connection records stay native: they are
about the log, not about an API call. ``to_native`` reads either shape back,
so ``audit tail`` and ``audit verify`` work on both.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

CLASS_UID = 6003
CATEGORY_UID = 6
ACTIVITY_OTHER = 99
OCSF_VERSION = "1.1.0"
REQUEST_EVENTS = frozenset({"authorized", "completed", "denied"})

# Native fields that have a home in the OCSF event; the rest go to ``unmapped``.
_MAPPED = frozenset(
    {
        "ts",
        "event",
        "request_id",
        "spiffe_id",
        "owner",
        "operation",
        "model_id",
        "model_arn",
        "region",
        "account",
        "peer",
        "outcome",
        "upstream_status",
        "latency_ms",
        "error",
    }
)


def _status(event: str, outcome: str | None) -> tuple[int, str]:
    if event == "authorized":
        return 0, "Unknown"  # allowed, not finished yet
    if outcome == "ok":
        return 1, "Success"
    return 2, "Failure"


def to_ocsf(record: dict[str, Any]) -> dict[str, Any]:
    """A native request record as an OCSF API Activity event (others unchanged)."""
    event = record.get("event")
    if event not in REQUEST_EVENTS:
        return record
    outcome = record.get("outcome")
    status_id, status = _status(event, outcome)
    error = record.get("error") or {}
    ts = record.get("ts")
    event_ms = int(datetime.fromisoformat(ts).timestamp() * 1000) if isinstance(ts, str) else None
    response: dict[str, Any] = {"code": record.get("upstream_status")}
    # A message cut to its marker (bound.py) is an object: OCSF's fields are strings.
    message = error.get("message") if isinstance(error.get("message"), str) else None
    if error:
        response.update(error=error.get("code"), message=message)
    mapped: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": ACTIVITY_OTHER,
        "activity_name": event,
        "type_uid": CLASS_UID * 100 + ACTIVITY_OTHER,
        "severity_id": 1 if status_id != 2 else 3,
        "time": event_ms,
        "time_dt": ts,
        "status_id": status_id,
        "status": status,
        "status_code": outcome,
        "status_detail": message,
        "duration": record.get("latency_ms"),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": record.get("request_id"),
            "correlation_uid": record.get("request_id"),
            "log_name": "bedrock-proxy-audit",
            "product": {"name": "bedrock-proxy", "vendor_name": "bedrock-proxy"},
        },
        "actor": {
            "user": {
                "uid": record.get("spiffe_id"),
                "type": "Workload",
                "org": {"name": record.get("owner")},
            }
        },
        "api": {
            "operation": record.get("operation"),
            "service": {"name": "bedrock-runtime"},
            "request": {"uid": record.get("request_id")},
            "response": response,
        },
        "resources": [
            {"uid": record.get("model_arn"), "name": record.get("model_id"), "type": "model"}
        ]
        if record.get("model_id")
        else [],
        "cloud": {
            "provider": "AWS",
            "region": record.get("region"),
            "account": {"uid": record.get("account")},
        },
        "src_endpoint": {"ip": record.get("peer")},
        "dst_endpoint": {"svc_name": "bedrock-runtime"},
        "unmapped": {k: v for k, v in record.items() if k not in _MAPPED}
        | {"event": event, "error": record.get("error")},
    }
    return mapped


def to_native(record: dict[str, Any]) -> dict[str, Any]:
    """The native view of a record in either format (for tail, verify and tests)."""
    if record.get("class_uid") != CLASS_UID:
        return record
    api, actor = record.get("api") or {}, (record.get("actor") or {}).get("user") or {}
    cloud = record.get("cloud") or {}
    resources = record.get("resources") or [{}]
    native = dict(record.get("unmapped") or {})
    native.update(
        ts=record.get("time_dt"),
        event=record.get("activity_name"),
        request_id=(record.get("metadata") or {}).get("uid"),
        spiffe_id=actor.get("uid"),
        owner=(actor.get("org") or {}).get("name"),
        operation=api.get("operation"),
        model_id=resources[0].get("name"),
        model_arn=resources[0].get("uid"),
        region=cloud.get("region"),
        account=(cloud.get("account") or {}).get("uid"),
        peer=(record.get("src_endpoint") or {}).get("ip"),
        outcome=record.get("status_code"),
        upstream_status=(api.get("response") or {}).get("code"),
        latency_ms=record.get("duration"),
    )
    for key in ("chain", "seq", "prev_hash"):
        if key in record:
            native[key] = record[key]
    return native
