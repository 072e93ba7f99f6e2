# rokv as one image for every role: broker, workers, the HTTP gateway, or all
# of them under supervisor (the default). docs/operations.md "Container image"
# says how.
#
#   docker build -t rokv .                                   # FROM python:3.12-slim-bookworm
#   docker/make-base rokv-base:bookworm                      # no registry? a local base (debootstrap)
#   docker build --build-arg BASE=rokv-base:bookworm -t rokv .   # any Debian-like image with python3 + venv
#   docker run -p 127.0.0.1:8080:8080 -p 127.0.0.1:5555:5555 rokv   # a whole pool on data/example.json
#   docker image prune -f --filter label=rokv.stage=build   # the build stage each build leaves behind
#
# Built with the classic builder too (no BuildKit-only syntax).

ARG BASE=python:3.12-slim-bookworm

# ---- build: a virtualenv with rokv and its server and HTTP extras ----------
FROM ${BASE} AS build
# Lets a test or a cleanup find and remove this stage's leftover image.
LABEL rokv.stage=build
# Behind a TLS-intercepting proxy, give pip its CA (PEM text):
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
# It is used by this stage only; the final image neither holds nor records it.
ARG EXTRA_CA_CERTS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/rokv
# A C compiler for rokv's compiled hot path (rokv.worker._native), in this stage
# only; where it cannot be installed the build goes on and the image runs
# rokv's pure-Python path (its workers say which in their log).
RUN (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc libc6-dev python3-dev >/dev/null) || echo "no C compiler: the image runs rokv's pure-Python path"
COPY pyproject.toml setup.py README.md /src/
COPY client /src/client
COPY server /src/server
COPY broker /src/broker
COPY worker /src/worker
COPY gateway /src/gateway
COPY ops /src/ops
# Every dependency ships as a wheel (pyzmq, msgpack, numpy, uvloop,
# httptools); only rokv.worker._native is compiled. pip and the compiler stay in
# this stage.
RUN if [ -n "$EXTRA_CA_CERTS" ]; then \
        cat "$(/opt/rokv/bin/python -c 'import ssl; print(ssl.get_default_verify_paths().openssl_cafile)')" \
            > /tmp/ca.pem 2>/dev/null || true; \
        printf '%s\n' "$EXTRA_CA_CERTS" >> /tmp/ca.pem; \
        export PIP_CERT=/tmp/ca.pem; \
    fi \
    && /opt/rokv/bin/pip install '/src[server,http]' \
    && /opt/rokv/bin/pip uninstall -y pip \
    && rm -f /tmp/ca.pem \
    && find /opt/rokv -name '__pycache__' -prune -exec rm -rf {} +
# Last, so that a new value costs no cached layer: lets whoever built the
# image find and remove exactly this build's leftover stage (the tests do).
ARG ROKV_BUILD_ID=""
LABEL rokv.build=${ROKV_BUILD_ID}

# ---- run: the base, the virtualenv, the configuration; no pip, no compiler -
FROM ${BASE}
# The base may bring pip (Debian's python3-pip, or the python images' own in
# /usr/local): out with it, so nothing here installs packages. The virtualenv
# lost its pip in the build stage. PIP_BREAK_SYSTEM_PACKAGES lets a pip that
# knows PEP 668 remove itself; an older pip ignores it.
RUN if dpkg-query -W -f='${Status}' python3-pip 2>/dev/null | grep -q 'ok installed'; then \
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq python3-pip >/dev/null; \
    fi \
    && if python3 -m pip --version >/dev/null 2>&1; then \
        PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip uninstall -y -q pip; \
    fi \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin rokv \
    && mkdir -p /app/run /app/data \
    && chown rokv:rokv /app/run
COPY --from=build /opt/rokv /opt/rokv
COPY supervisord.conf /app/supervisord.conf
COPY data/example.json /app/data/example.json
COPY docker/rokv-container /usr/local/bin/rokv-container
COPY docker/healthcheck.py /app/healthcheck.py
# ROKV_ROLE: all (broker, workers and, with ROKV_HTTP, the gateway, under
# supervisor), broker, worker (ROKV_WORKERS of them under supervisor) or http.
# Inside a container, 0.0.0.0 is the container's own interfaces: nothing is
# reachable from outside unless published (-p) or on a shared network.
ENV PATH=/opt/rokv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ROKV_ROLE=all \
    ROKV_DATA=/app/data/example.json \
    ROKV_FRONTEND=tcp://0.0.0.0:5555 \
    ROKV_BACKEND=tcp://0.0.0.0:5556 \
    ROKV_HTTP=0.0.0.0:8080
USER rokv
WORKDIR /app
EXPOSE 5555 5556 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["rokv-container", "health"]
ENTRYPOINT ["rokv-container"]
