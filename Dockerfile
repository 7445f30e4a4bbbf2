# Two images from one file; pick one with `docker build --target NAME .`:
#   emulator  the local bedrock-runtime + STS for docker-compose.yml: `.[dev]` (moto).
#   runtime   the proxy: `pip install .` and nothing else, so no moto, boto3 or test
#             tools. It is the last stage, so a plain `docker build .` builds it too.
# Both run as the dedicated user `proxy`, UID/GID 10001: fixed, so mounted files (the
# PKI's keys) can be given to it; above the range hosts hand out to people; not `nobody`,
# which every other service dropping privileges shares; and numeric in USER, so
# Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
FROM python:3.11-slim AS source
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --gid 10001 proxy \
    && useradd --uid 10001 --gid proxy --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin proxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY proxy_dev ./proxy_dev

FROM source AS emulator
RUN pip install ".[dev]"
USER 10001:10001
ENTRYPOINT ["bedrock-proxy"]
CMD ["emulator", "--host", "0.0.0.0", "--port", "8080", "--sts-port", "8081"]

FROM source AS runtime
RUN pip install .
USER 10001:10001
ENTRYPOINT ["bedrock-proxy"]
CMD ["serve", "--config", "/etc/bedrock-proxy/proxy.toml"]
