# One image for the proxy and the local emulator (the emulator needs the dev extras).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir ".[dev]"
USER nobody
ENTRYPOINT ["bedrock-proxy"]
