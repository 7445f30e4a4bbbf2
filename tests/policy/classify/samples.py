"""Sample secrets and bodies shared by the classification tests."""

from __future__ import annotations

import base64
import json

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT_VALUE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


def converse_body(*blocks: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": list(blocks)}], **extra}).encode()


IMAGE = {
    "image": {"format": "png", "source": {"bytes": base64.b64encode(b"\x89PNG" * 10).decode()}}
}
