# The tutorial-style single-stage image, for comparison in scripts/image-report only (never shipped):
# one stage, unpinned requirements, the whole build context copied, runs as root.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
WORKDIR /app
COPY . .
RUN python3 -m venv /venv && /venv/bin/pip install -r requirements.in && /venv/bin/pip install .
RUN /venv/bin/model-server-train --output /models/default
ENV MODEL_SERVER_MODEL_DIR=/models/default HOST=0.0.0.0 PATH=/venv/bin:$PATH
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
