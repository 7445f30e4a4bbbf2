"""bedrock-proxy: an inline, policy-enforcing reverse proxy for AWS bedrock-runtime.

Applications keep no AWS credentials; they point their Bedrock endpoint URL
here and present an X.509-SVID. For each call (see ``pipeline.py``):

    identity.py    mTLS client certificate -> verified SPIFFE identity
    operations.py  raw path -> operation and model label (decoded once)
    models.py      model id / ARN -> typed ModelRef; region.py: which region
    classify.py    declared data classification, never lowered
    decision.py    OPA input (pure), OPA answer -> Decision (strict, fail closed)
    obligations.py what the decision requires of the request (guardrail, caps)
    credentials.py per-task STS AssumeRole, scoped by a session policy, cached
    signing.py     header allow-list and botocore SigV4 over the forwarded bytes
    upstream.py    streamed relay; observe.py watches the stream on the side
    audit.py       one JSON line per event, written before forwarding

``app.py`` only wires these together and maps errors (``errors.py``) to
AWS-shaped responses in one place. ``emulator/`` is a local bedrock-runtime
and STS for tests and demos; ``devca.py`` and ``devstack.py`` run the local stack.
"""
