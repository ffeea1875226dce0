# modelroute gateway image: `docker build -t modelroute .` then
#   docker run -p 8080:8080 -e OPENAI_API_KEY modelroute
# serves the bundled policy on port 8080; mount your own at /etc/modelroute (main.route and what it includes),
# e.g. `-v "$PWD/policies:/etc/modelroute:ro"`. More processes: add `--workers N --redis redis://...` (docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# the project with the serve extra (starlette, uvicorn, redis), tokens (`set tokens.estimator`), otel (OTEL_*
# tracing) and semantic (WordLlama for `like` tasks, which the bundled policy uses; its weights ship in the wheel, so
# the image embeds offline), installed from the sources; the bundled policy and its example files go to
# /etc/modelroute, then the sources go
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY grammar ./grammar
COPY policies ./policies
COPY engine ./engine
COPY providers ./providers
RUN pip install ".[serve,tokens,otel,semantic]" \
    && mkdir -p /etc/modelroute \
    && cp -R policies/. /etc/modelroute/ \
    && cd / && rm -rf /src

RUN groupadd --system --gid 10001 modelroute \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelroute
USER 10001:10001
WORKDIR /tmp

# the port serve listens on and the HEALTHCHECK asks: change it with `-e MODELROUTE_PORT=9000` (not `--port`)
ENV MODELROUTE_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:' + os.environ['MODELROUTE_PORT'] + '/healthz', timeout=2).status != 200)"]

# sh only puts the port in, then `exec`s: modelroute is PID 1 and gets SIGTERM itself (a graceful shutdown,
# forwarded to every worker); CMD's arguments follow
ENTRYPOINT ["/bin/sh", "-c", "exec modelroute serve --port \"$MODELROUTE_PORT\" \"$@\"", "modelroute"]
CMD ["--host", "0.0.0.0", "--policy", "/etc/modelroute", "--watch"]
