# The dtq image: every service of compose.yaml runs `dtq <command>` from it, as an unprivileged
# user. The io task's root is /var/lib/dtq/io (a volume in compose.yaml), never the app's files.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dtq ./dtq
COPY transports ./transports
COPY scenarios ./scenarios
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /home/dtq dtq \
    && mkdir -p /var/lib/dtq/io && chown -R dtq:dtq /var/lib/dtq
ENV DTQ_LOG_FORMAT=json DTQ_IO_ROOT=/var/lib/dtq/io
USER dtq
ENTRYPOINT ["dtq"]
CMD ["--help"]
