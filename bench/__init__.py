"""Benchmark harness for bedrock-proxy: direct vs proxied calls, side by side.

``python -m bench`` (``make bench``) starts the emulator, OPA (or a stub
decision server), and proxy variants as separate processes pinned to cores,
drives them with vegeta (open-loop, fixed rate, mTLS) and an asyncio stream
client, and writes one JSON document per run to ``bench/results/``.

Nothing here is product code: it only starts the product as its users would
(``python -m proxy serve``) and measures it from outside (wire timings and
``/proc``). Everything listens on 127.0.0.1 only.
"""
