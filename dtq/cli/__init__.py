"""The `dtq` command: `main` parses and dispatches; `client` holds the commands that talk to a
cluster (api, submit, status, result, cancel), `namespace` the store's housekeeping."""
