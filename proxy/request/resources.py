"""ARNs of the resources a path names besides models: guardrails, async invocations.

Contract: ``parse_resource_arn(text, resource_type)`` returns a ``ResourceArn``
(partition, region, account, type, id) for
``arn:<partition>:bedrock:<region>:<12 digits>:<resource_type>/<id>``, or
``None`` when ``text`` is not exactly such an ARN. Callers (the route parser)
turn ``None`` into their own ``InvalidRequest``, which names the label.

Security reasoning:

- An ARN names the account and the region the call acts on, so policy must see
  both, as it sees a model ARN's. ``request.account`` then comes from the
  ARN, and the account allowlist applies to a guardrail or an async
  invocation of another account just as to a model.
- The region in the ARN must be a region of the ARN's own partition
  (``arn:aws-cn:bedrock:us-east-1:...`` is not an ARN of any partition), so
  policy, the session policy and Bedrock cannot read it differently. Whether
  it is the region of the call is the region resolver's check
  (``region.resolve_region``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.request.models import served_partition
from proxy.request.region import is_region

_ARN = re.compile(
    r"arn:(?P<partition>aws|aws-us-gov|aws-cn):bedrock:(?P<region>[a-z0-9-]{1,32})"
    r":(?P<account>[0-9]{12}):(?P<type>[a-z-]{1,64})/(?P<id>[a-z0-9]{1,64})"
)


@dataclass(frozen=True)
class ResourceArn:
    arn: str
    type: str
    partition: str
    region: str
    account: str
    id: str

    def to_opa(self) -> dict[str, Any]:
        return {
            "arn": self.arn,
            "type": self.type,
            "account": self.account,
            "region": self.region,
        }


def parse_resource_arn(text: str, resource_type: str) -> ResourceArn | None:
    """The ARN of a ``resource_type`` resource, or ``None`` if ``text`` is not one."""
    match = _ARN.fullmatch(text)
    if match is None or match["type"] != resource_type:
        return None
    region = match["region"]
    if not is_region(region) or served_partition(region) != match["partition"]:
        return None
    return ResourceArn(
        text, resource_type, match["partition"], region, match["account"], match["id"]
    )
