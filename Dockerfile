FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY feedback_loop ./feedback_loop
COPY streams ./streams
COPY consumers ./consumers
COPY online_models ./online_models
RUN pip install --no-cache-dir .
ENTRYPOINT ["feedback-loop"]
CMD ["worker"]
