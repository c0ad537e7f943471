# Image for the worker and beat services of docker-compose.yml.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY remediation ./remediation
RUN pip install --no-cache-dir . && useradd --system --uid 10001 remediation
USER remediation
CMD ["celery", "-A", "remediation", "worker", "--loglevel", "INFO"]
