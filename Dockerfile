# Image for the worker and beat services of docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY remediation ./remediation
# The default data folders (REMEDIATION_AUDIT__SPOOL_DIR, REMEDIATION_METRICS__MULTIPROC_DIR,
# REMEDIATION_BACKUP__DIR, relative to /app) belong to the user the worker runs as; the
# spool must be private to it (0700) or the worker refuses it.
RUN pip install --no-cache-dir . && useradd --system --uid 10001 remediation \
    && mkdir -p /app/.data/audit-spool /app/.data/metrics /app/.data/backups \
    && chown -R remediation:remediation /app/.data \
    && chmod 0700 /app/.data /app/.data/audit-spool /app/.data/backups
USER remediation
CMD ["celery", "-A", "remediation", "worker", "--loglevel", "INFO"]
