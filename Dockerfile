# The one image of docker-compose.yml: the collector, the worker, beat and the producer all
# run it, with different commands. Build context: the repository (see .dockerignore).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
COPY . .
# A regular (not editable) install: the image does not depend on /src at run time.
RUN pip install --no-cache-dir '.[redis]'

# Nothing needs root. /data is the collector's database folder: a named volume mounted there
# starts out with this ownership, so the unprivileged user can write to it.
RUN useradd --create-home --uid 10001 bugsnag \
    && mkdir /data \
    && chown bugsnag:bugsnag /data
USER bugsnag
WORKDIR /home/bugsnag

EXPOSE 9339
CMD ["bugsnag-celery", "collector", "--host", "0.0.0.0", "--port", "9339", "--db", "/data/collector.sqlite"]
