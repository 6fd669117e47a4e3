# The control plane's image: `docker build -t xds-server .` (what `xds-server inject`
# and docker-compose.yml run as the xds-server service).
FROM python:3.11-slim
# iptables: the image also runs as each pod's init container (`xds-server inject --mode
# capture`), setting the capture rules as istio-init does; curl, to try the mesh from an
# app container (`docker compose exec sleep curl http://reviews:9080/`).
RUN apt-get update && apt-get install -y --no-install-recommends iptables curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY translators ./translators
COPY xds_server ./xds_server
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
EXPOSE 15010 15012 15014
ENTRYPOINT ["xds-server"]
CMD ["serve", "--config-dir", "/mesh", "--xds-address", "0.0.0.0", "--debug-address", "0.0.0.0"]
