# The dtq image: every service of compose.yaml runs `dtq <command>` from it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dtq ./dtq
COPY transports ./transports
COPY scenarios ./scenarios
RUN pip install --no-cache-dir .
ENV DTQ_LOG_FORMAT=json
ENTRYPOINT ["dtq"]
CMD ["--help"]
