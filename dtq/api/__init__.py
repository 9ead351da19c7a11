"""The REST API: `dtq.api.server.create_app(backend)`.

The rule: every request is untrusted. `body` reads it (media type, size, strict JSON), `auth`
checks the bearer token, `submit` accepts work with the same validation as the broker path,
`views` renders records, `errors` and `schema` are shared with the client and the OpenAPI
description; `backend` is what the API stands on (a process cluster or the simulator).
"""
