"""bedrock-proxy: an inline, policy-enforcing reverse proxy for AWS bedrock-runtime.

Applications keep no AWS credentials; they point their Bedrock endpoint URL
here and present an X.509-SVID. Each call passes these stages, one package
per concern (``dataplane/pipeline.py`` runs them in order):

    identity/   tls_accept: TLS termination that audits failed handshakes;
                svid: client certificate -> verified SPIFFE identity (spiffe: ID rules)
    request/    operations: raw path -> operation and route (decoded once);
                models: model id / ARN -> ModelRef; region: which region;
                tools: every tool a body declares -> DeclaredTools
    policy/     classify/: declared classification raised by what the detectors
                find (scan, detectors, rules, redaction); decision: OPA input
                (pure) and answer -> Decision (strict, fail closed); obligations:
                what the decision requires of the request; revision: what OPA
                loaded; check: ``policy check`` dry runs
    tasks/      model: task rules; store: memory/Redis; service: the lifecycle;
                api: the /v1/tasks and /admin/tasks handlers
    aws/        credentials: per-task STS AssumeRole under a session policy,
                cached; signing: header allow-list and botocore SigV4
    dataplane/  pipeline: the stages in order; reading: one parse of a body and
                all policy reads in it (a job a body-work process can run);
                limits: per-caller budgets; upstream: streamed relay;
                observe: the stream watched on the side (response_capture
                keeps what the audit obligation asks for)
    audit/      log: write-ahead JSON lines in a signed hash chain (chain,
                sinks, ocsf); verify and cli read them back

``app.py`` only wires these together and maps errors (``errors.py``) to
AWS-shaped responses in one place; ``server.py`` runs the worker processes;
``config.py`` is the one validated settings object; ``metrics.py`` serves
Prometheus metrics on the admin listener; ``offload.py`` moves body-sized work
off the event loop (processes for Python work, threads for hashing). Dev
tooling (the local Bedrock emulator and STS, the dev CA, the dev stack and the
demo) is the separate package ``proxy_dev``: nothing here imports it, except
the CLI's dev verbs, which load it on demand.
"""
