FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY seeds ./seeds
RUN pip install --no-cache-dir .
RUN useradd --system ordercheck
USER ordercheck
EXPOSE 2575 8080 9100
CMD ["ordercheck", "serve", "--host", "0.0.0.0"]
