"""bedrock-proxy: an inline, policy-enforcing reverse proxy for AWS bedrock-runtime.

Applications keep no AWS credentials; they point their Bedrock endpoint URL
here and present an X.509-SVID. For each call (see ``pipeline.py``):

    tls_accept.py  TLS termination that audits failed handshakes
    identity.py    mTLS client certificate -> verified SPIFFE identity (spiffe.py)
    operations.py  raw path -> operation and model label (decoded once)
    models.py      model id / ARN -> typed ModelRef; region.py: which region
    classify.py    declared classification raised by detected findings (redact.py)
    tasks.py       task lifecycle rules; task_store.py memory/Redis; task_api.py HTTP
    decision.py    OPA input (pure), OPA answer -> Decision (strict, fail closed);
                   policy_revision.py: digest of what OPA loaded
    obligations.py what the decision requires of the request (guardrail, caps)
    credentials.py per-task STS AssumeRole, scoped by a session policy, cached
    signing.py     header allow-list and botocore SigV4 over the forwarded bytes
    upstream.py    streamed relay; observe.py watches the stream on the side
                   (and feeds response_capture.py, per audit_capture)
    audit.py       write-ahead JSON lines in a signed hash chain (audit_chain.py,
                   audit_sinks.py, ocsf.py); audit_verify.py / audit_cli.py read them

``app.py`` only wires these together and maps errors (``errors.py``) to
AWS-shaped responses in one place; ``server.py`` runs the worker processes;
``metrics.py`` serves Prometheus metrics on the admin listener. ``emulator/``
is a local bedrock-runtime and STS for tests and demos; ``devca.py``,
``devstack.py`` and ``demo.py`` run the local stack; ``policy_check.py`` dry-runs
decisions for policy authors.
"""
