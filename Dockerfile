# One image, two modes: `raven --mode=controller` and `raven --mode=agent`.
# The apt list is the Makefile's APT_RUNTIME; keep them the same.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
      iproute2 iptables wireguard-tools wireguard-go graphviz \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY raven ./raven
RUN pip install --no-cache-dir . && rm -rf /src

ENTRYPOINT ["raven"]
