# ordercheck: the listener, Celery workers and the review page (see docker-compose.yml).
# Dependencies are pinned by constraints.txt: a new release of one cannot change a built image.
FROM python:3.11.7-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY worker ./worker
COPY seeds ./seeds
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --system ordercheck \
    && install -d -o ordercheck /var/lib/ordercheck/metrics
USER ordercheck
# MLLP in, review page, listener /health and /metrics, worker /metrics
EXPOSE 2575 8080 9464 9465
CMD ["ordercheck", "serve", "--host", "0.0.0.0"]
